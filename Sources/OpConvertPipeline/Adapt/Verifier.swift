import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

public struct VerifyOptions: Sendable, Codable {
    public var base: String
    public var adapters: [String]
    /// One per adapter (default 1).
    public var weights: [Double]
    public var merged: String

    public init(base: String, adapters: [String], weights: [Double] = [], merged: String) {
        self.base = base
        self.adapters = adapters
        self.weights = weights
        self.merged = merged
    }
}

public struct VerifySummary: Codable, Sendable {
    public struct Tensor: Codable, Sendable {
        public var name: String
        public var dtype: String
        /// Largest and mean |stored - reference| in ulps of the stored dtype (at the stored value).
        public var maxUlp: Double
        public var meanUlp: Double
        /// Elements that are neither neighbour of the f64 reference in the stored dtype.
        public var outside: Int
    }
    public var base: String
    public var adapters: [String]
    public var merged: String
    /// Tensors the adapters change, checked element by element.
    public var changed: [Tensor]
    /// Tensors no adapter touches that are byte-identical to the base.
    public var untouchedEqual: Int
    /// Untouched tensors that differ (element-checked against the base values when the dtype
    /// was cast, reported in `changed` with the same rule).
    public var untouchedDiffering: [String]
    public var ok: Bool
    public var seconds: Double
    public var warnings: [String]

    /// The first tensor outside one rounding as an error (exit 65), nil when all are within.
    public var failure: AdaptError? {
        if let t = changed.first(where: { $0.outside > 0 }) {
            return .outsideRounding(tensor: t.name, count: t.outside, maxULP: t.maxUlp)
        }
        if let name = untouchedDiffering.first {
            return .mismatch(path: merged, reason: "tensor \(name) is not changed by any adapter but differs from the base")
        }
        return nil
    }
}

/// `opconvert verify`: recomputes every merged tensor in f64 from the base and the adapters
/// (the formulas of notes/formats.md, written again here: it shares only the name
/// resolution with `merge`, none of MergeEngine's arithmetic), and checks the stored value of
/// each element is one of the two values of its dtype around the reference: the result of
/// one correct rounding. Untouched tensors must be byte-equal.
public enum Verifier {
    public static func run(_ options: VerifyOptions) throws -> VerifySummary {
        var (summary, warnings) = try Warnings.collectForwarding { try verify(options) }
        summary.warnings = warnings
        return summary
    }

    private static func verify(_ options: VerifyOptions) throws -> VerifySummary {
        let started = Date()
        let weights = options.weights.isEmpty ? Array(repeating: 1.0, count: options.adapters.count) : options.weights
        guard !options.adapters.isEmpty else { throw AdaptError.invalidOption("give at least one adapter between BASE and MERGED") }
        guard weights.count == options.adapters.count, weights.allSatisfy(\.isFinite) else {
            throw AdaptError.invalidOption("--weight must be a finite number given once per adapter (\(options.adapters.count))")
        }
        let base = try TensorStore.open(options.base)
        let merged = try TensorStore.open(options.merged)
        var loaded: [(adapter: Adapter, weight: Double)] = []
        for (path, w) in zip(options.adapters, weights) {
            loaded.append((try AdapterLoader.open(path, base: base).0, w))
        }
        let plan = try MergePlan(base: base, adapters: loaded)
        let extra = merged.entries.map(\.info.name).filter { !base.contains($0) }
        if !extra.isEmpty {
            throw AdaptError.mismatch(path: options.merged, reason: "tensor \(extra[0]) is not in the base (\(extra.count) extra)")
        }
        var changed: [VerifySummary.Tensor] = [], equal = 0, differing: [String] = []
        for entry in base.entries {
            let name = entry.info.name
            guard let m = merged.entry(named: name) else {
                throw AdaptError.mismatch(path: options.merged, reason: "tensor \(name) of the base is missing")
            }
            guard m.info.shape == entry.info.shape else {
                throw AdaptError.mismatch(path: options.merged, reason: "tensor \(name) has shape \(m.info.shape), the base has \(entry.info.shape)")
            }
            let ops = plan.ops[name] ?? []
            if ops.isEmpty {
                if m.info.dtype == entry.info.dtype && Extractor.bytesEqual(base.data(entry), merged.data(m)) { equal += 1; continue }
                guard m.info.dtype != entry.info.dtype, entry.info.dtype.isDecodableFloat else { differing.append(name); continue }
            }
            let reference = try self.reference(entry, of: base, ops: ops, weights: loaded)
            changed.append(try compare(m, of: merged, reference: reference))
        }
        let summary = VerifySummary(base: options.base, adapters: options.adapters, merged: options.merged, changed: changed,
                                    untouchedEqual: equal, untouchedDiffering: differing, ok: false,
                                    seconds: Date().timeIntervalSince(started), warnings: [])
        var result = summary
        result.ok = summary.failure == nil
        return result
    }

    /// A tensor's values in f64 (exact for every float dtype).
    static func doubles(_ entry: TensorStore.Entry, of store: TensorStore) throws -> [Double] {
        if entry.info.dtype == .f64 {
            let raw = store.data(entry)
            return (0..<entry.info.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) }
        }
        return try TensorData.stored(store, entry).floats().map(Double.init)
    }

    static func doubles(_ data: TensorData) throws -> [Double] {
        try data.doubles()
    }

    /// W after every op, in f64: W += s·B·A (transposed for [in, out] storage), DoRA's
    /// m/‖W₀ + s·B·A‖ per output feature, replacements, bias and full-delta additions.
    static func reference(_ entry: TensorStore.Entry, of base: TensorStore, ops: [MergeOp],
                          weights: [(adapter: Adapter, weight: Double)]) throws -> [Double] {
        let original = try doubles(entry, of: base)
        var w = original
        let count = w.count
        let cols = count / max(entry.info.shape.first ?? 1, 1)
        for op in ops {
            // A row part of a fused tensor (q, k or v of OpenCLIP's in_proj): the op's row 0 is the part's first.
            let offset = (op.rows?.lowerBound ?? 0) * cols, span = op.rows.map { $0.count * cols } ?? count
            let weight = weights.first { $0.adapter.path == op.adapter }?.weight ?? 1
            switch op.action {
            case let .replace(data):
                w = try doubles(data)
            case let .addBias(data, scale):
                let d = try doubles(data)
                guard d.count == span else { throw AdaptError.mismatch(path: op.adapter, reason: "module \(op.module): \(d.count) values for a tensor of \(span)") }
                for i in 0..<span { w[offset + i] += scale * d[i] }
            case let .lora(m, layout, _, outDim, inner):
                let s = m.scaling * weight
                let a = try doubles(m.a), b = try doubles(m.b)
                // (B·A) row-major [out, inner] is the column-major product Aᵀ·Bᵀ.
                let product = Matrix(rows: inner, cols: m.rank, values: a).times(Matrix(rows: m.rank, cols: outDim, values: b)).values
                // Index in W of element (o, j) of B·A.
                func at(_ o: Int, _ j: Int) -> Int { layout == .direct ? offset + o * inner + j : j * outDim + o }
                if let magnitude = m.magnitude {
                    let mag = try doubles(magnitude)
                    var norms = [Double](repeating: 0, count: outDim)
                    for o in 0..<outDim {
                        var sum = 0.0
                        for j in 0..<inner { let v = original[at(o, j)] + s * product[o * inner + j]; sum += v * v }
                        norms[o] = sum.squareRoot()
                    }
                    for o in 0..<outDim {
                        let f = mag[o] / norms[o]
                        for j in 0..<inner { let i = at(o, j); w[i] = (w[i] + s * product[o * inner + j]) * f }
                    }
                } else {
                    for o in 0..<outDim { for j in 0..<inner { w[at(o, j)] += s * product[o * inner + j] } }
                }
            }
        }
        return w
    }

    /// Neighbours of a stored value in its dtype: the next value up and down.
    static func neighbours(_ dtype: DType, raw: UnsafeRawBufferPointer, index i: Int, value x: Double) -> (down: Double, up: Double) {
        switch dtype {
        case .f64: return (x.nextDown, x.nextUp)
        case .f32: let f = Float(x); return (Double(f.nextDown), Double(f.nextUp))
        default:
            // 16-bit formats in sign-magnitude bits: step the bits, decode.
            let bits = raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)
            let negative = bits & 0x8000 != 0
            let up: UInt16 = negative ? (bits == 0x8000 ? 0x0001 : bits - 1) : bits + 1
            let down: UInt16 = negative ? bits + 1 : (bits == 0 ? 0x8001 : bits - 1)
            func decode(_ b: UInt16) -> Double {
                var b = b, f: Float = 0
                DTypeConversion.decode(&b, dtype, to: &f, count: 1)
                return Double(f)
            }
            return (decode(down), decode(up))
        }
    }

    static func compare(_ entry: TensorStore.Entry, of store: TensorStore, reference: [Double]) throws -> VerifySummary.Tensor {
        let dtype = entry.info.dtype
        guard [.f64, .f32, .f16, .bf16].contains(dtype) else {
            throw AdaptError.unsupported(path: store.path, reason: "tensor \(entry.info.name) has dtype \(dtype.rawValue); verify checks f16, bf16, f32 and f64")
        }
        let stored = try doubles(entry, of: store)
        let raw = store.data(entry)
        var maxULP = 0.0, sumULP = 0.0, outside = 0
        for i in 0..<stored.count {
            let x = stored[i], ref = reference[i]
            if x == ref || (x.isNaN && ref.isNaN) { continue }
            let (down, up) = neighbours(dtype, raw: raw, index: i, value: x)
            let inside = (x < ref && up > ref) || (x > ref && down < ref)
            if !inside { outside += 1 }
            let spacing = abs(x) == .infinity ? .infinity : (x >= 0 ? up - x : x - down)
            let ulps = abs(x - ref) / spacing
            let e = ulps.isNaN ? .infinity : ulps
            maxULP = max(maxULP, e)
            sumULP += e
        }
        return VerifySummary.Tensor(name: entry.info.name, dtype: dtype.rawValue, maxUlp: maxULP,
                                    meanUlp: stored.isEmpty ? 0 : sumULP / Double(stored.count), outside: outside)
    }
}
