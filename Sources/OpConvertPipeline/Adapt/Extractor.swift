import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

public struct ExtractOptions: Sendable, Codable {
    public var base: String
    public var tuned: String
    public var output: String
    public var target: RankTarget
    /// LAPACK's full SVD of every delta instead of the randomized one (`--energy` always
    /// uses it: choosing a rank by energy needs the whole spectrum).
    public var exact: Bool
    /// Module names (leaf names like q_proj, or path suffixes) to extract; nil: every
    /// linear-like 2-D weight.
    public var targetModules: [String]?
    public var oversample: Int
    public var powerIterations: Int
    public var seed: UInt64
    public var overwrite: Bool

    public init(base: String, tuned: String, output: String, target: RankTarget, exact: Bool = false,
                targetModules: [String]? = nil, oversample: Int = 10, powerIterations: Int = 2, seed: UInt64 = 0,
                overwrite: Bool = false) {
        self.base = base
        self.tuned = tuned
        self.output = output
        self.target = target
        self.exact = exact
        self.targetModules = targetModules
        self.oversample = oversample
        self.powerIterations = powerIterations
        self.seed = seed
        self.overwrite = overwrite
    }
}

public struct ExtractSummary: Codable, Sendable {
    public struct Module: Codable, Sendable {
        public var name: String
        public var shape: [Int]
        public var rank: Int
        /// Σ kept s² / ‖ΔW‖²_F (from the singular values the SVD found).
        public var retainedEnergy: Double
        /// ‖ΔW - B·A‖_F / ‖ΔW‖_F with the f32 factors as written.
        public var relativeError: Double
    }
    public var base: String
    public var tuned: String
    public var output: String
    /// "randomized" or "exact".
    public var method: String
    public var modules: [Module]
    /// Weights that were selected but did not change (not written).
    public var unchanged: [String]
    /// Tensors whose shapes differ (resized vocabulary) or embeddings that changed: saved whole.
    public var modulesToSave: [String]
    /// Tensors that changed but are not linear weights (norms, biases): not in the adapter.
    public var notRepresented: [String]
    public var files: [String]
    public var seconds: Double
    public var warnings: [String]
}

/// `opconvert extract`: a LoRA adapter from the difference of a fine-tuned model and its
/// base, one module at a time (memory: the largest module's delta in f64 plus its SVD).
///
/// ΔW = TUNED - BASE in f64 (both decoded exactly: bf16/f16/f32 fit in f32); the truncated
/// SVD ΔW ≈ U_r S_r V_rᵀ is written as B = U_r S_r, A = V_rᵀ with lora_alpha = r, so every
/// module's scaling is exactly 1 and the factors are the only rounding (to f32).
public enum Extractor {
    public static func run(_ options: ExtractOptions) throws -> ExtractSummary {
        var (summary, warnings) = try Warnings.collectForwarding { try extract(options) }
        summary.warnings = warnings
        return summary
    }

    /// Embeddings change as whole rows; a LoRA on them is PEFT's Embedding layer, not Linear.
    static func isEmbeddingLike(_ name: String) -> Bool {
        let leaf = name.split(separator: ".").dropLast().last.map(String.init) ?? name
        return leaf.lowercased().contains("embed") || leaf == "wte" || leaf == "wpe"
    }

    static func selected(_ module: String, targets: [String]?) -> Bool {
        guard let targets else { return true }
        return targets.contains { module == $0 || module.hasSuffix("." + $0) }
    }

    private static func extract(_ options: ExtractOptions) throws -> ExtractSummary {
        let started = Date()
        try options.target.validate()
        guard options.oversample >= 0, options.powerIterations >= 0 else {
            throw AdaptError.invalidOption("--oversample and --power-iterations must not be negative")
        }
        let policy = OutputPolicy(overwrite: options.overwrite, inputs: [options.base, options.tuned])
        try OutputGuard.check(options.output, kind: .directory, policy: policy)
        let base = try TensorStore.open(options.base)
        let tuned = try TensorStore.open(options.tuned)
        let exact = options.exact || { if case .energy = options.target { return true } else { return false } }()

        var modules: [LowRankOutput] = []
        var reports: [ExtractSummary.Module] = []
        var unchanged: [String] = [], notRepresented: [String] = [], full: [FullTensorOutput] = []
        var matchedTargets = Set<String>()
        let onlyTuned = tuned.entries.map(\.info.name).filter { !base.contains($0) }
        if !onlyTuned.isEmpty {
            Warnings.emit("\(options.tuned): \(onlyTuned.count) tensor\(onlyTuned.count == 1 ? "" : "s") not in the base (\(onlyTuned.prefix(3).joined(separator: ", "))\(onlyTuned.count > 3 ? ", ..." : "")): not in the adapter")
        }
        for entry in base.entries {
            let name = entry.info.name
            guard let t = tuned.entry(named: name) else { continue }
            let isWeight = name.hasSuffix(".weight")
            let module = isWeight ? String(name.dropLast(".weight".count)) : name
            let isFloat = entry.info.dtype.isDecodableFloat && t.info.dtype.isDecodableFloat
            if t.info.shape != entry.info.shape {
                // A resized vocabulary: only the whole tuned tensor describes it.
                full.append(try fullTensor(name, t, of: tuned))
                continue
            }
            let linear = isWeight && isFloat && entry.info.shape.count == 2 && !isEmbeddingLike(name)
            if linear && selected(module, targets: options.targetModules) {
                matchedTargets.insert(module)
                let out = entry.info.shape[0], inner = entry.info.shape[1]
                let baseValues = try TensorData.stored(base, entry).floats()
                let tunedValues = try TensorData.stored(tuned, t).floats()
                base.files[entry.file].release(entry.info)
                tuned.files[t.file].release(t.info)
                // Dᵀ in column-major order is ΔW's row-major buffer: [inner, out].
                var delta = Matrix(zeros: inner, out)
                var nonZero = false
                for i in 0..<delta.values.count {
                    let d = Double(tunedValues[i]) - Double(baseValues[i])
                    delta.values[i] = d
                    if d != 0 { nonZero = true }
                }
                guard nonZero else { unchanged.append(module); continue }
                guard delta.values.allSatisfy(\.isFinite) else {
                    throw AdaptError.mismatch(path: options.tuned, reason: "tensor \(name): the difference to the base has NaN or Inf values")
                }
                let (m, report) = try factorize(delta, module: module, out: out, inner: inner, options: options, exact: exact)
                if let m { modules.append(m) } else { unchanged.append(module) }
                reports.append(report)
                continue
            }
            // Everything else goes in only when it changed.
            let changed = !bytesEqual(base.data(entry), tuned.data(t)) || entry.info.dtype != t.info.dtype
            guard changed else { continue }
            if isWeight && entry.info.shape.count == 2 && isEmbeddingLike(name) && selected(module, targets: options.targetModules) {
                full.append(try fullTensor(name, t, of: tuned))
            } else if !(linear && !selected(module, targets: options.targetModules)) {
                notRepresented.append(name)
            }
        }
        if let targets = options.targetModules {
            let missing = targets.filter { t in !matchedTargets.contains { $0 == t || $0.hasSuffix("." + t) } }
            if !missing.isEmpty {
                throw AdaptError.mismatch(path: options.base, reason: "--target-modules \(missing.joined(separator: ", ")) match no 2-D weight present in both models")
            }
        }
        if !notRepresented.isEmpty {
            Warnings.emit("\(notRepresented.count) changed tensor\(notRepresented.count == 1 ? " is" : "s are") not a linear weight and not in the adapter: \(notRepresented.prefix(5).joined(separator: ", "))\(notRepresented.count > 5 ? ", ..." : "")")
        }
        if modules.isEmpty && full.isEmpty {
            Warnings.emit("\(options.tuned): no selected weight differs from the base; the adapter is empty")
        }
        let files = try AdaptWriter.write(to: options.output, modules: modules, full: full, baseModel: base.directory,
                                          fanInFanOut: false, policy: policy)
        return ExtractSummary(base: options.base, tuned: options.tuned, output: options.output, method: exact ? "exact" : "randomized",
                              modules: reports, unchanged: unchanged, modulesToSave: full.map(\.name),
                              notRepresented: notRepresented, files: files, seconds: Date().timeIntervalSince(started), warnings: [])
    }

    /// One module's factors and report; nil factors when the kept rank is 0.
    static func factorize(_ delta: Matrix, module: String, out: Int, inner: Int, options: ExtractOptions,
                                  exact: Bool) throws -> (LowRankOutput?, ExtractSummary.Module) {
        // SVD of Dᵀ = U S Vᵀ, so ΔW = V S Uᵀ: B = V_r S_r [out, r], A = U_rᵀ [r, inner].
        let full: SVD
        let total = delta.frobeniusSquared
        switch (exact, options.target) {
        case let (false, .rank(r)):
            // The seed is mixed with the module's position-free name, so the test matrix
            // of a module does not depend on which other modules were selected.
            full = try TruncatedSVD.randomized(delta, rank: r, oversample: options.oversample,
                                               powerIterations: options.powerIterations,
                                               seed: options.seed ^ stableHash(module), module: module)
        default:
            full = try SVD(delta, module: module)
        }
        let k = options.target.rank(for: full.s)
        let kept = full.s.prefix(k).reduce(0) { $0 + $1 * $1 }
        var b = [Float](repeating: 0, count: out * k)
        for o in 0..<out { for j in 0..<k { b[o * k + j] = Float(full.vt[j, o] * full.s[j]) } }
        let a = full.u.values.prefix(inner * k).map { Float($0) }
        // The error of what is written: ΔWᵀ - Aᵀ·Bᵀ with the f32 factors.
        let at = Matrix(rows: inner, cols: k, values: a.map(Double.init))
        let bt = Matrix(rows: k, cols: out, values: b.map(Double.init))
        let approx = at.times(bt)
        var err = 0.0
        for i in 0..<delta.values.count { let d = delta.values[i] - approx.values[i]; err += d * d }
        let report = ExtractSummary.Module(name: module, shape: [out, inner], rank: k, retainedEnergy: min(kept / total, 1),
                                           relativeError: (err / total).squareRoot())
        guard k > 0 else { return (nil, report) }
        return (LowRankOutput(path: module, a: a, aShape: [k, inner], b: b, bShape: [out, k], bias: nil, isEmbedding: false), report)
    }

    private static func fullTensor(_ name: String, _ entry: TensorStore.Entry, of store: TensorStore) throws -> FullTensorOutput {
        FullTensorOutput(name: name, dtype: entry.info.dtype, shape: entry.info.shape, bytes: Array(store.data(entry)))
    }

    static func bytesEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        guard let pa = a.baseAddress, let pb = b.baseAddress else { return true }
        return memcmp(pa, pb, a.count) == 0
    }

    /// FNV-1a of the name: the same on every run and machine (Swift's Hasher is seeded).
    static func stableHash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in s.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }
}
