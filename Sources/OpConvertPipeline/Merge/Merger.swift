import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpenBLAS
import Foundation

public struct MergeOptions: Sendable {
    public var base: String
    /// Adapter paths with their weights, applied in this order.
    public var adapters: [(path: String, weight: Double)]
    public var output: String
    public var dtype: FloatDType?
    public var maxShardSize: Int
    public var overwrite: Bool
    /// Refuse non-finite results and zero-norm DoRA rows.
    public var safe: Bool
    public var showProgress: Bool?
    /// Rename rules for OP checkpoints saved by other trainers.
    public var keyMap: String?

    public init(base: String, adapters: [(path: String, weight: Double)], output: String, dtype: FloatDType? = nil,
                maxShardSize: Int = 5_000_000_000, overwrite: Bool = false, safe: Bool = false, showProgress: Bool? = nil) {
        self.base = base
        self.adapters = adapters
        self.output = output
        self.dtype = dtype
        self.maxShardSize = maxShardSize
        self.overwrite = overwrite
        self.safe = safe
        self.showProgress = showProgress
    }
}

public struct MergeSummary: Codable, Sendable {
    public struct Adapter: Codable, Sendable {
        public var path: String
        public var kind: String
        public var weight: Double
        public var modules: Int
    }
    public var base: String
    public var output: String
    public var adapters: [Adapter]
    public var tensors: Int
    public var mergedTensors: Int
    public var copiedTensors: Int
    public var outputBytes: Int
    public var files: [String]
    public var seconds: Double
    public var warnings: [String]
}

/// `opconvert merge`: folds adapters into base weights, one base tensor at a time.
public enum Merger {
    public static func run(_ options: MergeOptions) throws -> MergeSummary {
        // summary.warnings lists this merge's warnings; callers collecting warnings get the
        // same ones, once.
        var (summary, warnings) = try Warnings.collectForwarding { try merge(options) }
        summary.warnings = warnings
        return summary
    }

    private static func merge(_ options: MergeOptions) throws -> MergeSummary {
        let started = Date()
        let base = try TensorStore.open(options.base)
        let target = Converter.target(for: options.output, maxShardSize: options.maxShardSize)
        var writer = try ModelWriter(rewriting: base, to: target, castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        writer.inputs += options.adapters.map(\.path) + (options.keyMap.map { [$0] } ?? [])
        // Before any adapter is read or materialized: the output must be writable.
        try writer.checkOutput()
        var loaded: [(adapter: Adapter, weight: Double)] = []
        var kinds: [String] = []
        let keyMap = try options.keyMap.map { try KeyMap(path: $0) }
        for (path, weight) in options.adapters {
            let (adapter, kind) = try AdapterLoader.open(path, base: base, keyMap: keyMap)
            loaded.append((adapter, weight))
            kinds.append(kind)
            if weight == 0 { Warnings.emit("\(path): --weight 0 given: this adapter has no effect on the output") }
        }
        let plan = try MergePlan(base: base, adapters: loaded)
        let specs = writer.tensors
        let progress = ProgressBar(label: "merge", totalItems: specs.count, totalBytes: base.totalBytes, enabled: options.showProgress)
        // The engine splits each GEMM across the cores itself: OpenBLAS's own threads would
        // spin between the many small GEMMs and compete with conversion and writing.
        let blasThreads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(blasThreads) }
        let engine = MergeEngine(safe: options.safe)
        let copier = ChunkBuffer()
        var merged = 0
        let result = try writer.write { spec, sink in
            let entry = base.entry(named: spec.name)!
            if let ops = plan.ops[spec.name] {
                try engine.merge(entry: entry, store: base, ops: ops, outDType: spec.dtype, sink: sink)
                base.files[entry.file].release(entry.info)
                merged += 1
            } else {
                try copier.write(entry, of: base, to: spec.dtype, into: sink)
            }
            progress.advance(bytes: entry.info.byteCount)
        }
        progress.finish()
        if let first = engine.firstNonFinite {
            Warnings.emit("merge result has \(engine.nonFiniteValues) NaN/Inf value\(engine.nonFiniteValues == 1 ? "" : "s") in \(engine.nonFiniteTensors) tensor\(engine.nonFiniteTensors == 1 ? "" : "s"), first in module \(first.module) (tensor \(first.tensor)); --safe refuses such results")
        }
        let adapters = zip(loaded, kinds).enumerated().map { i, pair in
            MergeSummary.Adapter(path: pair.0.adapter.path, kind: pair.1, weight: pair.0.weight, modules: plan.moduleCounts[i])
        }
        return MergeSummary(base: options.base, output: options.output, adapters: adapters, tensors: specs.count,
                            mergedTensors: merged, copiedTensors: specs.count - merged, outputBytes: result.bytesWritten,
                            files: result.files, seconds: Date().timeIntervalSince(started), warnings: [])
    }
}

/// Opens anything `merge` accepts as an adapter: whatever format the registry recognises.
public enum AdapterLoader {
    /// The adapter and its kind ("peft-lora", "op-dora", ...). OP checkpoints are
    /// materialized in memory, with module shapes read from `base`.
    public static func open(_ path: String, base: TensorStore?, keyMap: KeyMap? = nil) throws -> (Adapter, String) {
        let adapter = try AdapterRegistry.open(path, options: AdapterOpenOptions(base: base, keyMap: keyMap))
        return (adapter, adapter.kind.rawValue)
    }
}

/// Applies a tensor's merge operations in f32, row block by row block, and streams the
/// rounded result to the sink. Peak memory: one block of f32 rows plus its encoded copy.
final class MergeEngine {
    let safe: Bool
    /// Without --safe: NaN/Inf values written, the tensors holding them, and the first one.
    private(set) var nonFiniteValues = 0
    private(set) var nonFiniteTensors = 0
    private(set) var firstNonFinite: (module: String, tensor: String)?
    private var zeroNormInTensor = false
    /// Rows per block are chosen to keep a block near this many f32 values.
    static let blockElements = 4 << 20

    init(safe: Bool) { self.safe = safe }

    func merge(entry: TensorStore.Entry, store: TensorStore, ops: [MergeOp], outDType: DType, sink: TensorSink) throws {
        let info = entry.info
        let rows = max(info.shape.first ?? 1, 1)
        let total = info.elementCount
        let cols = rows > 0 ? total / rows : 0
        let src = store.data(entry)
        let whole = ops.contains { $0.needsWholeTensor } || info.shape.count < 2
        let blockRows = whole ? rows : max(1, min(rows, Self.blockElements / max(cols, 1)))

        // Decode each adapter's factors once per tensor.
        let factors = try ops.map { op -> (a: [Float], b: [Float], mag: [Float]?, other: [Float]?) in
            switch op.action {
            case let .lora(m, _, _, _, _): return (try m.a.floats(), try m.b.floats(), try m.magnitude?.floats(), nil)
            case let .replace(d): return ([], [], nil, try d.floats())
            case let .addBias(d, _): return ([], [], nil, try d.floats())
            }
        }
        let block = UnsafeMutablePointer<Float>.allocate(capacity: max(blockRows * cols, 1))
        defer { block.deallocate() }
        let outWidth = outDType.byteWidth!
        let encoded = UnsafeMutableRawPointer.allocate(byteCount: max(blockRows * cols * outWidth, 1), alignment: 64)
        defer { encoded.deallocate() }
        let inWidth = info.dtype.byteWidth!

        // DoRA norms come from the unmerged base plus that adapter's own delta (PEFT's
        // multi-adapter merge), so later DoRA ops need the original rows.
        let needsOriginal = ops.dropFirst().contains { if case let .lora(m, _, _, _, _) = $0.action { return m.magnitude != nil } else { return false } }
        let original = needsOriginal ? UnsafeMutablePointer<Float>.allocate(capacity: max(blockRows * cols, 1)) : nil
        let scratch = needsOriginal ? UnsafeMutablePointer<Float>.allocate(capacity: max(blockRows * cols, 1)) : nil
        defer { original?.deallocate(); scratch?.deallocate() }

        var tensorNonFinite = 0
        zeroNormInTensor = false
        defer {
            // A zero-norm DoRA row has its own warning, which already says it gives NaN/Inf.
            if tensorNonFinite > 0 && !zeroNormInTensor {
                nonFiniteValues += tensorNonFinite
                nonFiniteTensors += 1
                if firstNonFinite == nil { firstNonFinite = (ops.map(\.module).joined(separator: "+"), info.name) }
            }
        }
        var r0 = 0
        while r0 < rows {
            let nr = min(blockRows, rows - r0)
            let n = nr * cols
            if n > 0 { DTypeConversion.decode(src.baseAddress! + r0 * cols * inWidth, info.dtype, to: block, count: n) }
            original?.update(from: block, count: n)
            for (k, (op, f)) in zip(ops, factors).enumerated() {
                let buffers = Buffers(block: block, original: k == 0 ? nil : original, scratch: scratch)
                try apply(op, factors: f, buffers: buffers, r0: r0, nr: nr, rows: rows, cols: cols)
            }
            if safe { try checkFinite(block, count: n, dtype: outDType, module: ops.map(\.module).joined(separator: "+"), tensor: info.name) }
            if n > 0 { DTypeConversion.encode(block, to: encoded, outDType, count: n) }
            // Counted after rounding: values beyond the output dtype's range became Inf there.
            if !safe && n > 0 { tensorNonFinite += TensorScan.nonFinite(UnsafeRawBufferPointer(start: encoded, count: n * outWidth), outDType, count: n) ?? 0 }
            try sink.write(UnsafeRawBufferPointer(start: encoded, count: n * outWidth))
            r0 += nr
        }
    }

    struct Buffers {
        var block: UnsafeMutablePointer<Float>
        /// The base rows before any op, when an earlier op changed `block`.
        var original: UnsafeMutablePointer<Float>?
        var scratch: UnsafeMutablePointer<Float>?
    }

    private func apply(_ op: MergeOp, factors f: (a: [Float], b: [Float], mag: [Float]?, other: [Float]?),
                       buffers: Buffers, r0: Int, nr: Int, rows: Int, cols: Int) throws {
        let block = buffers.block
        switch op.action {
        case .replace:
            f.other!.withUnsafeBufferPointer { v in block.update(from: v.baseAddress! + r0 * cols, count: nr * cols) }
        case let .addBias(_, scale):
            f.other!.withUnsafeBufferPointer { v in
                for i in 0..<(nr * cols) { block[i] += scale * v[r0 * cols + i] }
            }
        case let .lora(m, layout, scale, outDim, inner):
            let r = m.rank
            func addDelta(_ dst: UnsafeMutablePointer<Float>) {
                f.a.withUnsafeBufferPointer { a in
                    f.b.withUnsafeBufferPointer { b in
                        let pa = UncheckedSendable(a.baseAddress!), pb = UncheckedSendable(b.baseAddress!), pd = UncheckedSendable(dst)
                        // Disjoint row ranges of the block, one per core.
                        DTypeConversion.parallel(nr, minPiece: 16, align: 1) { i0, n in
                            switch layout {
                            case .direct:
                                // rows of W are output features: dst[nr, inner] += s · B[r0..., :] · A
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(inner), Int32(r),
                                            scale, pb.value + (r0 + i0) * r, Int32(r), pa.value, Int32(inner), 1, pd.value + i0 * inner, Int32(inner))
                            case .transposed:
                                // rows of W are input features: dst[nr, out] += s · A[:, r0...]ᵀ · Bᵀ
                                cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, Int32(n), Int32(outDim), Int32(r),
                                            scale, pa.value + r0 + i0, Int32(inner), pb.value, Int32(r), 1, pd.value + i0 * outDim, Int32(outDim))
                            }
                        }
                    }
                }
            }
            guard let mag = f.mag else { addDelta(block); return }
            var normSource = block
            if let original = buffers.original, let scratch = buffers.scratch {
                scratch.update(from: original, count: nr * cols)
                addDelta(scratch)
                normSource = scratch
            }
            addDelta(block)
            let scales = try doraScales(magnitude: mag, layout: layout, source: normSource, r0: r0, nr: nr, rows: rows, cols: cols, module: m.path)
            switch layout {
            case .direct:
                for i in 0..<nr { let row = block + i * cols; let s = scales[i]; for j in 0..<cols { row[j] *= s } }
            case .transposed:
                for i in 0..<nr { let row = block + i * cols; for j in 0..<cols { row[j] *= scales[j] } }
            }
        }
    }

    /// m / ‖V‖ for each output feature: rows of the block for direct layouts, whole columns
    /// for transposed ones; sums of squares in f64.
    private func doraScales(magnitude: [Float], layout: MergeOp.Layout, source: UnsafeMutablePointer<Float>,
                            r0: Int, nr: Int, rows: Int, cols: Int, module: String) throws -> [Float] {
        switch layout {
        case .direct:
            return try (0..<nr).map { i in
                let row = source + i * cols
                var s = 0.0
                for j in 0..<cols { let v = Double(row[j]); s += v * v }
                let norm = s.squareRoot()
                if norm == 0 { try zeroNorm(module, r0 + i) }
                return Float(Double(magnitude[r0 + i]) / norm)
            }
        case .transposed:
            precondition(r0 == 0 && nr == rows, "column DoRA needs the whole tensor")
            var sums = [Double](repeating: 0, count: cols)
            for i in 0..<rows {
                let row = source + i * cols
                for j in 0..<cols { let v = Double(row[j]); sums[j] += v * v }
            }
            return try (0..<cols).map { j in
                let norm = sums[j].squareRoot()
                if norm == 0 { try zeroNorm(module, j) }
                return Float(Double(magnitude[j]) / norm)
            }
        }
    }

    private func zeroNorm(_ module: String, _ index: Int) throws {
        if safe { throw AdapterError.zeroNorm(module: module, row: index) }
        zeroNormInTensor = true
        Warnings.emit("DoRA module \(module): zero weight norm at index \(index) gives non-finite weights")
    }

    private func checkFinite(_ p: UnsafeMutablePointer<Float>, count: Int, dtype: DType, module: String, tensor: String) throws {
        // Largest f32 magnitude that still rounds to a finite value in the output dtype.
        let limit: Float
        switch dtype {
        case .f16: limit = 65519.996
        case .bf16: limit = 3.3961775e38
        default: limit = .greatestFiniteMagnitude
        }
        for i in 0..<count where !(abs(p[i]) <= limit) {
            throw AdapterError.nonFinite(module: module, tensor: tensor)
        }
    }
}
