import COpConvertKernels
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Dispatch
import Foundation

/// Applies a tensor's merge operations in f64 and streams the result, rounded once to the
/// stored dtype, to the sink.
///
/// Rows go in small blocks that stay in a core's cache: each block is widened to f64 (exact),
/// gets every op (the low-rank products accumulate into it; DoRA rescales it), is rounded once
/// straight into the writer's buffer and scanned there, so the data crosses memory once on the way in and
/// once on the way out. The cores take blocks as they come free; the writer's threads
/// write earlier buffers meanwhile. Ops that need whole columns (DoRA on a transposed layout)
/// and 1-D tensors take the whole tensor as one block, with the products split across cores.
/// Peak memory: a few blocks per core plus the writer's buffers (or one whole tensor for
/// the ops that need it).
package final class MergeEngine {
    let safe: Bool
    /// Without --safe: NaN/Inf values written, the tensors holding them, and the first one.
    package private(set) var nonFiniteValues = 0
    private(set) var nonFiniteTensors = 0
    private(set) var firstNonFinite: (module: String, tensor: String)?
    /// Values in one core's block: 512 KiB of f64 (plus 256 KiB of f32 staging), about a core's
    /// L2, so widening, the products and rounding all hit cache (the factors are small:
    /// rank x columns).
    package static let defaultBlockElements = 1 << 16
    /// At least one row per block whatever this says (tests use small blocks).
    let blockElements: Int

    package init(safe: Bool, blockElements: Int = MergeEngine.defaultBlockElements) {
        self.safe = safe
        self.blockElements = blockElements
    }

    /// A LoRA's factors widened to f64 (with Bᵀ, [rank, out], for transposed layouts, so the
    /// kernel reads contiguous rows), a DoRA magnitude, or a replacement/bias tensor (kept in
    /// f32: it can be as large as the base tensor, and widens exactly where it is used), or a
    /// computed delta (LyCORIS) in the f64 it was made in.
    typealias Factors = (a: [Double], b: [Double], bt: [Double], mag: [Double]?, other: OtherValues?)

    enum OtherValues {
        case f32([Float])
        case f64([Double])

        init(_ data: TensorData) throws {
            if case .computed = data { self = .f64(try data.doubles()) } else { self = .f32(try data.floats()) }
        }

        /// `body(i)` for every index with the value as f64.
        func withValues<R>(_ body: ((Int) -> Double) -> R) -> R {
            switch self {
            case let .f32(v): return v.withUnsafeBufferPointer { p in body { Double(p[$0]) } }
            case let .f64(v): return v.withUnsafeBufferPointer { p in body { p[$0] } }
            }
        }
    }

    /// One tensor's shape and ops, shared read-only by the workers.
    private struct Job {
        let ops: [MergeOp]
        let factors: [Factors]
        /// Nil only for an empty tensor.
        let src: UnsafeRawPointer?
        let inDType: DType
        let outDType: DType
        let rows: Int
        let cols: Int
        let module: String
        let tensor: String
    }

    /// What one block saw: values that rounded to NaN/Inf, zero-norm DoRA rows (warned
    /// about after the tensor is done, in row order), and the first error.
    private struct Outcome {
        var nonFinite = 0
        var zeroNorms: [(module: String, index: Int)] = []
        var error: Error?
    }

    /// The f64 buffers of one block in flight, and the f32 staging its narrow dtypes widen through.
    private final class Scratch {
        let block: UnsafeMutablePointer<Double>
        let staging: UnsafeMutablePointer<Float>
        /// The base rows before any op, when a later DoRA op needs them (see `merge`).
        let original: UnsafeMutablePointer<Double>?
        let copy: UnsafeMutablePointer<Double>?

        init(capacity: Int, needsOriginal: Bool) {
            let n = max(capacity, 1)
            block = .allocate(capacity: n)
            staging = .allocate(capacity: n)
            original = needsOriginal ? .allocate(capacity: n) : nil
            copy = needsOriginal ? .allocate(capacity: n) : nil
        }

        deinit {
            block.deallocate()
            staging.deallocate()
            original?.deallocate()
            copy?.deallocate()
        }
    }

    package func merge(entry: TensorStore.Entry, store: TensorStore, ops: [MergeOp], outDType: DType, sink: TensorSink) throws {
        let info = entry.info
        let rows = max(info.shape.first ?? 1, 1)
        let total = info.elementCount
        let cols = rows > 0 ? total / rows : 0
        // Decode each adapter's factors once per tensor.
        let factors = try ops.map { op -> Factors in
            switch op.action {
            case let .lora(m, layout, _, outDim, _):
                let b = try m.b.floats().map(Double.init)
                let bt = layout == .transposed ? Self.transpose(b, rows: outDim, cols: m.rank) : []
                return (try m.a.floats().map(Double.init), b, bt, try m.magnitude?.floats().map(Double.init), nil)
            case let .replace(d): return ([], [], [], nil, try OtherValues(d))
            case let .addBias(d, _): return ([], [], [], nil, try OtherValues(d))
            }
        }
        let job = Job(ops: ops, factors: factors, src: store.data(entry).baseAddress, inDType: info.dtype, outDType: outDType, rows: rows, cols: cols,
                      module: ops.map(\.module).joined(separator: "+"), tensor: info.name)
        // DoRA norms come from the unmerged base plus that adapter's own delta (PEFT's
        // multi-adapter merge), so later DoRA ops need the original rows.
        let needsOriginal = ops.dropFirst().contains { if case let .lora(m, _, _, _, _) = $0.action { return m.magnitude != nil } else { return false } }
        let whole = ops.contains { $0.needsWholeTensor } || info.shape.count < 2

        var outcomes: [Outcome]
        if whole || total == 0 || cols == 0 {
            let outWidth = outDType.byteWidth!
            let encoded = UnsafeMutableRawPointer.allocate(byteCount: max(total * outWidth, 1), alignment: 64)
            defer { encoded.deallocate() }
            var outcome = Outcome()
            if total > 0 {
                let scratch = Scratch(capacity: total, needsOriginal: needsOriginal)
                do { try process(job, r0: 0, nr: rows, scratch: scratch, out: encoded, splitUpdates: true, outcome: &outcome) } catch { outcome.error = error }
            }
            outcomes = [outcome]
            if outcome.error == nil { try sink.write(UnsafeRawBufferPointer(start: encoded, count: total * outWidth)) }
        } else {
            outcomes = try mergeInBlocks(job, needsOriginal: needsOriginal, sink: sink)
        }
        try finish(job, outcomes)
    }

    /// Rows in cache-sized blocks, rounded straight into the sink's buffer one buffer-full
    /// at a time. The cores take blocks as they come free (a core another process holds
    /// up does not hold up the rest); each block's outcome is kept in row order.
    private func mergeInBlocks(_ job: Job, needsOriginal: Bool, sink: TensorSink) throws -> [Outcome] {
        let rowBytes = job.cols * job.outDType.byteWidth!
        let blockRows = max(1, min(job.rows, blockElements / job.cols))
        let pool = ScratchPool(capacity: blockRows * job.cols, needsOriginal: needsOriginal)
        var outcomes: [Outcome] = []
        var r0 = 0
        while r0 < job.rows {
            let taken = try sink.writeInPlace(granule: rowBytes, maxCount: (job.rows - r0) * rowBytes) { region in
                let nr = region.count / rowBytes
                let base = UncheckedSendable(region.baseAddress!)
                let blocks = (nr + blockRows - 1) / blockRows
                var results = [Outcome](repeating: Outcome(), count: blocks)
                results.withUnsafeMutableBufferPointer { results in
                    let shared = UncheckedSendable(results)
                    Self.forEachBlock(blocks) { b in
                        let scratch = pool.take()
                        defer { pool.put(scratch) }
                        let i = b * blockRows, n = min(blockRows, nr - i)
                        do {
                            try self.process(job, r0: r0 + i, nr: n, scratch: scratch, out: base.value + i * rowBytes,
                                             splitUpdates: false, outcome: &shared.value[b])
                        } catch { shared.value[b].error = error }
                    }
                }
                if let error = results.lazy.compactMap(\.error).first { throw error }
                outcomes += results
            }
            r0 += taken / rowBytes
        }
        return outcomes
    }

    /// Scratch buffers for the blocks in flight: one per core at most, made on demand.
    // @unchecked: `free` is only touched under `lock`; a Scratch is used by one block at a time.
    private final class ScratchPool: @unchecked Sendable {
        private let lock = NSLock()
        private var free: [Scratch] = []
        let capacity: Int, needsOriginal: Bool
        init(capacity: Int, needsOriginal: Bool) { self.capacity = capacity; self.needsOriginal = needsOriginal }
        func take() -> Scratch { lock.withLock { free.popLast() } ?? Scratch(capacity: capacity, needsOriginal: needsOriginal) }
        func put(_ s: Scratch) { lock.withLock { free.append(s) } }
    }

    /// Runs `body(block)` for 0..<count, spread over the cores when count > 1.
    private static func forEachBlock(_ count: Int, _ body: (Int) -> Void) {
        if count < 2 { if count == 1 { body(0) }; return }
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: count) { shared.value($0) }
        }
    }

    private static func transpose(_ m: [Double], rows: Int, cols: Int) -> [Double] {
        guard m.count == rows * cols else { return m }
        var t = [Double](repeating: 0, count: m.count)
        for i in 0..<rows { for j in 0..<cols { t[j * rows + i] = m[i * cols + j] } }
        return t
    }

    /// The blocks' warnings in row order, then the tensor's NaN/Inf count; the first
    /// error (lowest rows first) is thrown.
    private func finish(_ job: Job, _ outcomes: [Outcome]) throws {
        if let error = outcomes.lazy.compactMap(\.error).first { throw error }
        var zeroNorm = false
        for o in outcomes {
            for z in o.zeroNorms {
                zeroNorm = true
                Warnings.emit("DoRA module \(z.module): zero weight norm at index \(z.index) gives non-finite weights")
            }
        }
        let nonFinite = outcomes.reduce(0) { $0 + $1.nonFinite }
        // A zero-norm DoRA row has its own warning, which already says it gives NaN/Inf.
        if nonFinite > 0 && !zeroNorm {
            nonFiniteValues += nonFinite
            nonFiniteTensors += 1
            if firstNonFinite == nil { firstNonFinite = (job.module, job.tensor) }
        }
    }

    /// Rows [r0, r0 + nr): widen into `scratch` (f64), apply every op, round once into `out` (and
    /// count what rounded to NaN/Inf). `splitUpdates`: the products use every core (one block
    /// for the whole tensor); otherwise this runs on one core and must not fan out.
    private func process(_ job: Job, r0: Int, nr: Int, scratch: Scratch, out: UnsafeMutableRawPointer, splitUpdates: Bool,
                         outcome: inout Outcome) throws {
        let cols = job.cols, n = nr * cols
        guard n > 0, let src = job.src else { return }
        let inWidth = job.inDType.byteWidth!, outWidth = job.outDType.byteWidth!
        let block = scratch.block
        DTypeConversion.decode(src + r0 * cols * inWidth, job.inDType, to: block, count: n, staging: scratch.staging)
        scratch.original?.update(from: block, count: n)
        for (k, (op, f)) in zip(job.ops, job.factors).enumerated() {
            let buffers = Buffers(block: block, original: k == 0 ? nil : scratch.original, scratch: scratch.copy)
            try apply(op, factors: f, buffers: buffers, r0: r0, nr: nr, rows: job.rows, cols: cols, splitUpdates: splitUpdates, outcome: &outcome)
        }
        if safe { try checkFinite(block, count: n, dtype: job.outDType, module: job.module, tensor: job.tensor) }
        DTypeConversion.encode(block, to: out, job.outDType, count: n)
        // Counted after rounding: values beyond the output dtype's range became Inf there.
        if !safe { outcome.nonFinite += TensorScan.nonFinite(UnsafeRawBufferPointer(start: out, count: n * outWidth), job.outDType, count: n) ?? 0 }
    }

    struct Buffers {
        var block: UnsafeMutablePointer<Double>
        /// The base rows before any op, when an earlier op changed `block`.
        var original: UnsafeMutablePointer<Double>?
        var scratch: UnsafeMutablePointer<Double>?
    }

    private func apply(_ op: MergeOp, factors f: Factors, buffers: Buffers, r0: Int, nr: Int, rows: Int, cols: Int,
                       splitUpdates: Bool, outcome: inout Outcome) throws {
        let block = buffers.block
        switch op.action {
        case .replace:
            f.other!.withValues { v in
                let src = r0 * cols
                for i in 0..<(nr * cols) { block[i] = v(src + i) }
            }
        case let .addBias(_, scale):
            f.other!.withValues { v in
                if let part = op.rows {
                    // Only the block's rows inside the part; the data's row 0 is the part's first.
                    let lo = max(r0, part.lowerBound), hi = min(r0 + nr, part.upperBound)
                    guard lo < hi else { return }
                    let dst = block + (lo - r0) * cols, src = (lo - part.lowerBound) * cols
                    for i in 0..<((hi - lo) * cols) { dst[i] = dst[i].addingProduct(scale, v(src + i)) }
                    return
                }
                for i in 0..<(nr * cols) { block[i] = block[i].addingProduct(scale, v(r0 * cols + i)) }
            }
        case let .lora(m, layout, scale, outDim, inner):
            let r = m.rank
            func addDelta(_ dst: UnsafeMutablePointer<Double>) {
                f.a.withUnsafeBufferPointer { a in
                    (layout == .direct ? f.b : f.bt).withUnsafeBufferPointer { b in
                        let pa = a.baseAddress!, pb = b.baseAddress!
                        // dst[i0..<i0+n] += s · L · R with a fixed order per element (see
                        // opc_lowrank_update_f64): the bits do not depend on the blocks.
                        func update(_ i0: Int, _ n: Int) {
                            if let part = op.rows {
                                // A row part (direct layout only, see MergePlan): the block's
                                // rows inside it get B's rows counted from the part's start.
                                let lo = max(r0 + i0, part.lowerBound), hi = min(r0 + i0 + n, part.upperBound)
                                guard lo < hi else { return }
                                opc_lowrank_update_f64(dst + (lo - r0) * inner, inner, pb + (lo - part.lowerBound) * r, r, 1, pa, inner, hi - lo, inner, r, scale)
                                return
                            }
                            switch layout {
                            case .direct:
                                // rows of W are output features: dst[nr, inner] += s · B[r0..., :] · A
                                opc_lowrank_update_f64(dst + i0 * inner, inner, pb + (r0 + i0) * r, r, 1, pa, inner, n, inner, r, scale)
                            case .transposed:
                                // rows of W are input features: dst[nr, out] += s · A[:, r0...]ᵀ · Bᵀ
                                opc_lowrank_update_f64(dst + i0 * outDim, outDim, pa + r0 + i0, 1, inner, pb, outDim, n, outDim, r, scale)
                            }
                        }
                        if splitUpdates {
                            // Disjoint row ranges of the block, one per core.
                            DTypeConversion.parallel(nr, minPiece: 16, align: 1) { i0, n in update(i0, n) }
                        } else {
                            update(0, nr)
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
            let scales = try doraScales(magnitude: mag, layout: layout, source: normSource, r0: r0, nr: nr, rows: rows, cols: cols,
                                        module: m.path, outcome: &outcome)
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
    private func doraScales(magnitude: [Double], layout: MergeOp.Layout, source: UnsafeMutablePointer<Double>,
                            r0: Int, nr: Int, rows: Int, cols: Int, module: String, outcome: inout Outcome) throws -> [Double] {
        switch layout {
        case .direct:
            return try (0..<nr).map { i in
                let row = source + i * cols
                var s = 0.0
                for j in 0..<cols { s = s.addingProduct(row[j], row[j]) }
                let norm = s.squareRoot()
                if norm == 0 { try zeroNorm(module, r0 + i, &outcome) }
                return magnitude[r0 + i] / norm
            }
        case .transposed:
            precondition(r0 == 0 && nr == rows, "column DoRA needs the whole tensor")
            var sums = [Double](repeating: 0, count: cols)
            for i in 0..<rows {
                let row = source + i * cols
                for j in 0..<cols { sums[j] = sums[j].addingProduct(row[j], row[j]) }
            }
            return try (0..<cols).map { j in
                let norm = sums[j].squareRoot()
                if norm == 0 { try zeroNorm(module, j, &outcome) }
                return magnitude[j] / norm
            }
        }
    }

    private func zeroNorm(_ module: String, _ index: Int, _ outcome: inout Outcome) throws {
        if safe { throw AdapterError.zeroNorm(module: module, row: index) }
        outcome.zeroNorms.append((module, index))
    }

    private func checkFinite(_ p: UnsafeMutablePointer<Double>, count: Int, dtype: DType, module: String, tensor: String) throws {
        // Magnitudes below these round to a finite value of the output dtype; at or above
        // (the halfway point past the largest finite value, whose last bit is odd) to Inf.
        let limit: Double
        switch dtype {
        case .f16: limit = 65520                            // 65504 + 2^4
        case .bf16: limit = 0x1p128 - 0x1p119               // (2 - 2^-7)·2^127 + 2^119
        case .f32: limit = 0x1p128 - 0x1p103                // Float.greatestFiniteMagnitude + 2^103
        default: limit = .infinity
        }
        for i in 0..<count where !(abs(p[i]) < limit) {
            throw AdapterError.nonFinite(module: module, tensor: tensor)
        }
    }
}
