import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Problems specific to extract, resize, combine and verify, each naming the file or module.
public enum AdaptError: CategorizedError, Sendable {
    case invalidOption(String)
    case unsupported(path: String, reason: String)
    case mismatch(path: String, reason: String)
    /// verify: a tensor of the merged model is not within one rounding of the reference.
    case outsideRounding(tensor: String, count: Int, maxULP: Double)

    public var category: ErrorCategory {
        switch self {
        case .invalidOption: return .usage
        case .unsupported: return .unsupported
        case .mismatch, .outsideRounding: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .invalidOption(m): return m
        case let .unsupported(p, r): return "\(p): \(r)"
        case let .mismatch(p, r): return "\(p): \(r)"
        case let .outsideRounding(t, n, u):
            return "tensor \(t): \(n) element\(n == 1 ? "" : "s") outside one rounding of the f64 reference (max error \(String(format: "%.3g", u)) ulp)"
        }
    }
}

/// How many singular triplets to keep: a fixed rank, or the retained energy fraction.
public enum RankTarget: Sendable, Equatable, Codable {
    case rank(Int)
    case energy(Double)

    package func validate() throws {
        switch self {
        case let .rank(r) where r < 1: throw AdaptError.invalidOption("--rank must be at least 1, got \(r)")
        case let .energy(f) where !(f > 0 && f <= 1): throw AdaptError.invalidOption("--energy must be in (0, 1], got \(f)")
        default: break
        }
    }

    /// The kept rank for these singular values (largest first).
    package func rank(for s: [Double]) -> Int {
        switch self {
        case let .rank(r): return min(r, s.count)
        case let .energy(f): return TruncatedSVD.rank(forEnergy: f, singularValues: s)
        }
    }
}

/// One low-rank module to be written: ΔW = B·A with scaling 1 (lora_alpha = r), factors
/// in f32 and PEFT's orientation (A [r, in...], B [out, r, ...]).
package struct LowRankOutput: Sendable {
    package var path: String
    package var a: [Float]
    package var aShape: [Int]
    package var b: [Float]
    package var bShape: [Int]
    package var bias: [Float]?
    package var isEmbedding: Bool
    package var rank: Int { aShape.first ?? 0 }

    package init(path: String, a: [Float], aShape: [Int], b: [Float], bShape: [Int], bias: [Float]?, isEmbedding: Bool) {
        self.path = path
        self.a = a
        self.aShape = aShape
        self.b = b
        self.bShape = bShape
        self.bias = bias
        self.isEmbedding = isEmbedding
    }
}

/// A full tensor written as modules_to_save: its bytes as stored in the source.
package struct FullTensorOutput: Sendable {
    /// Base-relative tensor name, e.g. model.embed_tokens.weight.
    package var name: String
    package var dtype: DType
    package var shape: [Int]
    package var bytes: [UInt8]
}

/// Facts of one truncation: what was kept of ΔW's squared Frobenius norm.
package struct Truncation: Sendable {
    package var rank: Int
    /// Σ kept s² / Σ s².
    package var retainedEnergy: Double
    /// ‖ΔW - kept‖_F / ‖ΔW‖_F from the discarded singular values.
    package var relativeError: Double
}

package enum LowRank {
    /// Truncated SVD of scale·B·A without forming it: B = Q_B R_B, Aᵀ = Q_A R_A (thin QR),
    /// SVD of the r x r core scale·R_B·R_Aᵀ = U S Vᵀ, then B' = Q_B U_k S_k, A' = V_kᵀ Q_Aᵀ.
    /// `b` is row-major [out, r], `a` row-major [r, inner]. When r exceeds out or inner the
    /// product is small and is formed and factorized directly.
    package static func truncate(b: [Double], a: [Double], out: Int, inner: Int, rank r: Int, scale: Double,
                                 target: RankTarget, module: String) throws -> (b: [Double], a: [Double], Truncation) {
        // Row-major [out, r] is column-major Bᵀ; row-major [r, inner] is column-major Aᵀ.
        let bt = Matrix(rows: r, cols: out, values: b)
        let at = Matrix(rows: inner, cols: r, values: a)
        let u: Matrix, s: [Double], aPrimeT: (Int) -> Matrix
        if r <= out && r <= inner {
            let qrB = try ThinQR(bt.transposed, module: module)
            let qrA = try ThinQR(at, module: module)
            var core = qrB.r.times(qrA.r, transposeOther: true)
            for i in 0..<core.values.count { core.values[i] *= scale }
            let svd = try SVD(core, module: module)
            u = qrB.q.times(svd.u)
            s = svd.s
            aPrimeT = { k in qrA.q.times(svd.vt.rowSlice(0..<k), transposeOther: true) }
        } else {
            var dt = at.times(bt)  // (B·A)ᵀ [inner, out]
            for i in 0..<dt.values.count { dt.values[i] *= scale }
            let svd = try SVD(dt, module: module)
            // (B·A)ᵀ = U S Vᵀ, so B·A = V S Uᵀ: the left factor is V, the right Uᵀ.
            u = svd.vt.transposed
            s = svd.s
            aPrimeT = { k in svd.u.columns(0..<k) }
        }
        let k = target.rank(for: s)
        let (bOut, aOut) = factors(u: u, s: s, aT: aPrimeT(k), k: k, out: out, inner: inner)
        return (bOut, aOut, summarize(s, k))
    }

    /// Row-major B' = U_k·S_k [out, k] and A' [k, inner] from column-major U [out, ≥k] and
    /// A'ᵀ [inner, k] (whose column-major buffer is A' row-major).
    package static func factors(u: Matrix, s: [Double], aT: Matrix, k: Int, out: Int, inner: Int) -> (b: [Double], a: [Double]) {
        var b = [Double](repeating: 0, count: out * k)
        for o in 0..<out { for j in 0..<k { b[o * k + j] = u[o, j] * s[j] } }
        return (b, Array(aT.values.prefix(inner * k)))
    }

    package static func summarize(_ s: [Double], _ k: Int) -> Truncation {
        let total = s.reduce(0) { $0 + $1 * $1 }
        let dropped = s.dropFirst(k).reduce(0) { $0 + $1 * $1 }
        guard total > 0 else { return Truncation(rank: k, retainedEnergy: 1, relativeError: 0) }
        return Truncation(rank: k, retainedEnergy: (total - dropped) / total, relativeError: (dropped / total).squareRoot())
    }
}

/// Writes a PEFT LoRA directory from in-memory factors (and modules_to_save tensors): every
/// module at scaling 1 (lora_alpha = its rank), the most common rank as r and the other
/// modules in rank_pattern/alpha_pattern.
package enum AdaptWriter {
    static let prefix = "base_model.model."

    package static func write(to path: String, modules: [LowRankOutput], full: [FullTensorOutput], baseModel: String?,
                              fanInFanOut: Bool, policy: OutputPolicy) throws -> [String] {
        try OutputGuard.check(path, kind: .directory, policy: policy)
        var tensors: [(TensorSpec, [UInt8])] = []
        func bytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }
        for m in modules {
            let key = prefix + m.path
            let (aName, bName) = m.isEmbedding ? (".lora_embedding_A", ".lora_embedding_B") : (".lora_A.weight", ".lora_B.weight")
            tensors.append((TensorSpec(name: key + aName, dtype: .f32, shape: m.aShape), bytes(m.a)))
            tensors.append((TensorSpec(name: key + bName, dtype: .f32, shape: m.bShape), bytes(m.b)))
            if let bias = m.bias {
                tensors.append((TensorSpec(name: key + ".lora_B.bias", dtype: .f32, shape: [bias.count]), bytes(bias)))
            }
        }
        for t in full { tensors.append((TensorSpec(name: prefix + t.name, dtype: t.dtype, shape: t.shape), t.bytes)) }
        let dir = try OutputDirectory(path: path, policy: policy)
        try SafetensorsWriter.write(path: dir.path("adapter_model.safetensors"), tensors: tensors, metadata: ["format": "pt"])
        let config = self.config(modules: modules, full: full, baseModel: baseModel, fanInFanOut: fanInFanOut)
        let configFile = try OutputFile(path: dir.path("adapter_config.json"))
        try configFile.write(Array(JSONWriter.serialize(config, style: .python(indent: 2, sortKeys: true)).utf8))
        try configFile.commit(sync: true)
        try dir.commit()
        return ["adapter_config.json", "adapter_model.safetensors"]
    }

    /// adapter_config.json: PEFT's fields; alpha = rank everywhere, so every scaling is 1.
    package static func config(modules: [LowRankOutput], full: [FullTensorOutput], baseModel: String?, fanInFanOut: Bool) -> JSONValue {
        var counts: [Int: (n: Int, first: Int)] = [:]
        for (i, m) in modules.enumerated() { counts[m.rank, default: (0, i)].n += 1 }
        let r = counts.max { ($0.value.n, -$0.value.first) < ($1.value.n, -$1.value.first) }?.key ?? 8
        let others = modules.filter { $0.rank != r }
        let pattern: [(String, JSONValue)] = others.map { ($0.path, .int(Int64($0.rank))) }
        let saved = full.map { $0.name.hasSuffix(".weight") ? String($0.name.dropLast(".weight".count)) : $0.name }
        let fields: [(String, JSONValue)] = [
            ("alpha_pattern", .object(pattern)),
            ("base_model_name_or_path", baseModel.map { .string($0) } ?? .null),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(fanInFanOut)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("lora_alpha", .int(Int64(r))),
            ("lora_bias", .bool(modules.contains { $0.bias != nil })),
            ("lora_dropout", .double(0)),
            ("modules_to_save", saved.isEmpty ? .null : .array(saved.map { .string($0) })),
            ("peft_type", .string("LORA")),
            ("r", .int(Int64(r))),
            ("rank_pattern", .object(pattern)),
            ("target_modules", .array(modules.map { .string($0.path) })),
            ("task_type", .string("CAUSAL_LM")),
            ("use_dora", .bool(false)),
            ("use_rslora", .bool(false)),
        ]
        return .object(fields)
    }

    /// base_model_name_or_path of a PEFT adapter directory, when it records one.
    package static func baseModelName(of adapterPath: String) -> String? {
        let config = FileSystem.join(adapterPath, "adapter_config.json")
        guard FileSystem.isRegularFile(config), let bytes = try? FileSystem.readAll(config),
              let json = try? JSONParser.parse(bytes) else { return nil }
        return json["base_model_name_or_path"]?.stringValue
    }
}
