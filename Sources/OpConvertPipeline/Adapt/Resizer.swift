import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

public struct ResizeOptions: Sendable, Codable {
    public var adapter: String
    public var output: String
    public var target: RankTarget
    public var overwrite: Bool

    public init(adapter: String, output: String, target: RankTarget, overwrite: Bool = false) {
        self.adapter = adapter
        self.output = output
        self.target = target
        self.overwrite = overwrite
    }
}

/// Per module: the rank before and after, and what of s·B·A's squared Frobenius norm is kept.
public struct AdaptModuleReport: Codable, Sendable {
    public var name: String
    public var rankBefore: Int
    public var rank: Int
    public var retainedEnergy: Double
    public var relativeError: Double
}

public struct ResizeSummary: Codable, Sendable {
    public var adapter: String
    public var output: String
    public var modules: [AdaptModuleReport]
    /// Modules whose product is zero (not written).
    public var dropped: [String]
    public var files: [String]
    public var seconds: Double
    public var warnings: [String]
}

/// `opconvert resize`: each module's exact truncated SVD of s·B·A from the QR factors of B
/// and Aᵀ (the r x r core is all that is decomposed); the written module has scaling 1 with
/// the old scale folded into B, so s'·B'·A' is the truncated product itself.
public enum Resizer {
    public static func run(_ options: ResizeOptions) throws -> ResizeSummary {
        var (summary, warnings) = try Warnings.collectForwarding { try resize(options) }
        summary.warnings = warnings
        return summary
    }

    private static func resize(_ options: ResizeOptions) throws -> ResizeSummary {
        let started = Date()
        try options.target.validate()
        let policy = OutputPolicy(overwrite: options.overwrite, inputs: [options.adapter])
        try OutputGuard.check(options.output, kind: .directory, policy: policy)
        let (adapter, _) = try AdapterLoader.open(options.adapter, base: nil)
        try requireLowRankOnly(adapter)
        var modules: [LowRankOutput] = [], reports: [AdaptModuleReport] = [], dropped: [String] = []
        for m in adapter.modules {
            let (b, a, out, inner) = try flatFactors(m, adapter: adapter.path)
            let (nb, na, t) = try LowRank.truncate(b: b, a: a, out: out, inner: inner, rank: m.rank, scale: m.scaling,
                                                   target: options.target, module: m.path)
            reports.append(AdaptModuleReport(name: m.path, rankBefore: m.rank, rank: t.rank, retainedEnergy: t.retainedEnergy,
                                             relativeError: t.relativeError))
            guard t.rank > 0 else { dropped.append(m.path); continue }
            modules.append(try output(m, b: nb, a: na, rank: t.rank, bias: m.bias.map { try scaled($0, m.scaling) }))
        }
        let files = try AdaptWriter.write(to: options.output, modules: modules, full: try fullTensors(adapter),
                                          baseModel: AdaptWriter.baseModelName(of: options.adapter),
                                          fanInFanOut: adapter.modules.first?.fanInFanOut ?? false, policy: policy)
        return ResizeSummary(adapter: options.adapter, output: options.output, modules: reports, dropped: dropped, files: files,
                             seconds: Date().timeIntervalSince(started), warnings: [])
    }

    /// DoRA's magnitude renormalizes W + s·B·A row by row: a truncated B·A would change every
    /// row's norm, so no low-rank module can keep it exactly.
    static func requireLowRankOnly(_ adapter: Adapter) throws {
        if let m = adapter.modules.first(where: { $0.magnitude != nil }) {
            throw AdaptError.unsupported(path: adapter.path, reason: "module \(m.path) is DoRA (lora_magnitude_vector): truncating B·A changes the weight norms DoRA rescales by, so it cannot be kept exactly; merge it instead")
        }
        if !adapter.deltas.isEmpty {
            throw AdaptError.unsupported(path: adapter.path, reason: "\(adapter.deltas.count) full-delta module\(adapter.deltas.count == 1 ? "" : "s") (\(adapter.deltas[0].name)) are not low-rank")
        }
    }

    /// B as row-major [out, r] and A as row-major [r, inner] in f64.
    static func flatFactors(_ m: LoraModule, adapter: String) throws -> (b: [Double], a: [Double], out: Int, inner: Int) {
        let out = m.b.shape.first ?? 0
        let inner = m.a.shape.dropFirst().reduce(1, *)
        guard m.a.shape.first == m.rank, m.b.shape.count >= 2, m.b.shape[1] == m.rank,
              m.b.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            throw AdaptError.mismatch(path: adapter, reason: "module \(m.path): lora_A \(m.a.shape) and lora_B \(m.b.shape) are not rank-\(m.rank) factors")
        }
        let a = try m.a.floats().map(Double.init), b = try m.b.floats().map(Double.init)
        guard a.allSatisfy(\.isFinite), b.allSatisfy(\.isFinite) else {
            throw AdaptError.mismatch(path: adapter, reason: "module \(m.path): lora_A or lora_B holds NaN or Inf values")
        }
        return (b, a, out, inner)
    }

    /// A written module shaped like `m` (conv kernels and 1x1 B trailing dims kept) at rank k.
    static func output(_ m: LoraModule, b: [Double], a: [Double], rank k: Int, bias: [Float]?) throws -> LowRankOutput {
        LowRankOutput(path: m.path, a: a.map { Float($0) }, aShape: [k] + m.a.shape.dropFirst(),
                      b: b.map { Float($0) }, bShape: [m.b.shape[0], k] + m.b.shape.dropFirst(2),
                      bias: bias, isEmbedding: m.isEmbedding)
    }

    static func scaled(_ t: TensorData, _ s: Double) throws -> [Float] {
        try t.floats().map { Float(Double($0) * s) }
    }

    /// modules_to_save copies, kept as stored.
    static func fullTensors(_ adapter: Adapter) throws -> [FullTensorOutput] {
        try adapter.replacements.map { name, data in
            switch data {
            case let .stored(store, entry):
                return FullTensorOutput(name: name, dtype: entry.info.dtype, shape: entry.info.shape, bytes: Array(store.data(entry)))
            case let .memory(values, shape):
                return FullTensorOutput(name: name, dtype: .f32, shape: shape, bytes: values.withUnsafeBytes { Array($0) })
            case let .computed(c):
                return FullTensorOutput(name: name, dtype: .f64, shape: c.shape, bytes: try c.values().withUnsafeBytes { Array($0) })
            }
        }
    }
}
