import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

public enum CombineMethod: String, Sendable, Codable, CaseIterable {
    /// Ranks concatenated: B = [w₁s₁B₁ | w₂s₂B₂ ...], A = [A₁; A₂ ...]; B·A = Σ wᵢsᵢBᵢAᵢ exactly.
    case cat
    /// cat, then each module truncated by `resize`'s exact SVD of the concatenated product.
    case svd
}

public struct CombineOptions: Sendable, Codable {
    public var adapters: [String]
    /// One per adapter (default 1).
    public var weights: [Double]
    public var output: String
    public var method: CombineMethod
    /// Required for svd.
    public var target: RankTarget?
    public var overwrite: Bool

    public init(adapters: [String], weights: [Double] = [], output: String, method: CombineMethod = .cat,
                target: RankTarget? = nil, overwrite: Bool = false) {
        self.adapters = adapters
        self.weights = weights
        self.output = output
        self.method = method
        self.target = target
        self.overwrite = overwrite
    }
}

public struct CombineSummary: Codable, Sendable {
    public var adapters: [String]
    public var weights: [Double]
    public var output: String
    public var method: String
    public var modules: [AdaptModuleReport]
    public var files: [String]
    public var seconds: Double
    public var warnings: [String]
}

/// `opconvert combine`: several LoRA adapters of one base into one. Each adapter's own
/// scaling (alpha/r or rsLoRA's alpha/√r) and its --weight are folded into its B block, so
/// the combined adapter has scaling 1 and merging it equals merging every input with its
/// weight (PEFT's `linear` mixes cross terms; this never does).
public enum Combiner {
    public static func run(_ options: CombineOptions) throws -> CombineSummary {
        var (summary, warnings) = try Warnings.collectForwarding { try combine(options) }
        summary.warnings = warnings
        return summary
    }

    private static func combine(_ options: CombineOptions) throws -> CombineSummary {
        let started = Date()
        guard !options.adapters.isEmpty else { throw AdaptError.invalidOption("give at least one adapter") }
        let weights = options.weights.isEmpty ? Array(repeating: 1.0, count: options.adapters.count) : options.weights
        guard weights.count == options.adapters.count else {
            throw AdaptError.invalidOption("--weight was given \(weights.count) times for \(options.adapters.count) adapters")
        }
        guard weights.allSatisfy(\.isFinite) else { throw AdaptError.invalidOption("--weight must be a finite number") }
        if options.method == .svd {
            guard let target = options.target else { throw AdaptError.invalidOption("--method svd needs --rank (or --energy)") }
            try target.validate()
        }
        let policy = OutputPolicy(overwrite: options.overwrite, inputs: options.adapters)
        try OutputGuard.check(options.output, kind: .directory, policy: policy)
        var adapters: [Adapter] = []
        for path in options.adapters {
            let (adapter, _) = try AdapterLoader.open(path, base: nil)
            try Resizer.requireLowRankOnly(adapter)
            if !adapter.replacements.isEmpty {
                throw AdaptError.unsupported(path: path, reason: "modules_to_save (\(adapter.replacements[0].name)) replace whole tensors and cannot be weighted or combined")
            }
            adapters.append(adapter)
        }
        let bases = options.adapters.map { AdaptWriter.baseModelName(of: $0) }
        if let first = bases.compactMap({ $0 }).first, let other = zip(options.adapters, bases).first(where: { $0.1 != nil && $0.1 != first }) {
            Warnings.emit("\(other.0): base_model_name_or_path \"\(other.1!)\" differs from \"\(first)\" of \(options.adapters[bases.firstIndex(of: first)!]); the adapters may not share a base")
        }
        // The union of modules, in first-seen order.
        var order: [String] = []
        var parts: [String: [(adapter: Int, module: LoraModule)]] = [:]
        for (i, a) in adapters.enumerated() {
            for m in a.modules {
                if parts[m.path] == nil { order.append(m.path) }
                parts[m.path, default: []].append((i, m))
            }
        }
        var modules: [LowRankOutput] = [], reports: [AdaptModuleReport] = []
        for path in order {
            let contributions = parts[path]!
            let first = contributions[0].module
            for (i, m) in contributions.dropFirst() {
                guard m.b.shape[0] == first.b.shape[0], Array(m.a.shape.dropFirst()) == Array(first.a.shape.dropFirst()),
                      m.isEmbedding == first.isEmbedding else {
                    throw AdaptError.mismatch(path: options.adapters[i], reason: "module \(path): lora_A \(m.a.shape) / lora_B \(m.b.shape) do not fit \(options.adapters[contributions[0].adapter])'s lora_A \(first.a.shape) / lora_B \(first.b.shape)")
                }
            }
            // Concatenated ranks: B [out, Σr] with wᵢ·sᵢ folded in, A [Σr, inner].
            let out = first.b.shape[0], inner = first.a.shape.dropFirst().reduce(1, *)
            let total = contributions.reduce(0) { $0 + $1.module.rank }
            var b = [Double](repeating: 0, count: out * total), a: [Double] = []
            a.reserveCapacity(total * inner)
            var bias: [Double]?
            var offset = 0
            for (i, m) in contributions {
                let (mb, ma, _, _) = try Resizer.flatFactors(m, adapter: options.adapters[i])
                let s = m.scaling * weights[i]
                for o in 0..<out { for j in 0..<m.rank { b[o * total + offset + j] = s * mb[o * m.rank + j] } }
                a += ma
                if let mbias = m.bias {
                    let values = try mbias.floats()
                    guard values.count == out else {
                        throw AdaptError.mismatch(path: options.adapters[i], reason: "module \(path): lora_B.bias has \(values.count) values, expected \(out)")
                    }
                    var sum = bias ?? [Double](repeating: 0, count: out)
                    for o in 0..<out { sum[o] += s * Double(values[o]) }
                    bias = sum
                }
                offset += m.rank
            }
            var rank = total
            var t = Truncation(rank: total, retainedEnergy: 1, relativeError: 0)
            if options.method == .svd, let target = options.target {
                (b, a, t) = try LowRank.truncate(b: b, a: a, out: out, inner: inner, rank: total, scale: 1, target: target, module: path)
                rank = t.rank
            }
            reports.append(AdaptModuleReport(name: path, rankBefore: total, rank: rank, retainedEnergy: t.retainedEnergy,
                                             relativeError: t.relativeError))
            guard rank > 0 else { continue }
            modules.append(try Resizer.output(first, b: b, a: a, rank: rank, bias: bias.map { $0.map { Float($0) } }))
        }
        let files = try AdaptWriter.write(to: options.output, modules: modules, full: [], baseModel: bases.compactMap { $0 }.first,
                                          fanInFanOut: adapters.first?.modules.first?.fanInFanOut ?? false, policy: policy)
        return CombineSummary(adapters: options.adapters, weights: weights, output: options.output, method: options.method.rawValue,
                              modules: reports, files: files, seconds: Date().timeIntervalSince(started), warnings: [])
    }
}
