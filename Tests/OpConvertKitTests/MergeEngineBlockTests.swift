import Foundation
import XCTest
@testable import OpConvertKit

/// The merge engine on tensors that span several row blocks (and several in-place writer
/// regions): the bytes must not depend on the block size, the writer's regions or the
/// core count, and must equal an f64 reference rounded once where f32 is exact.
final class MergeEngineBlockTests: XCTestCase {
    // 520 x 1024 = 532,480 elements: five blocks at the default block size.
    static let rows = 520, cols = 1024, rank = 4, biasCount = 1000

    /// Small integers scaled by powers of two: every f32 product and sum below is exact,
    /// and W + delta still needs bf16 rounding (ties included) in [2, 4).
    private struct Data {
        var w: [Float] = []
        var bias: [Float] = []
        var seed: UInt32 = 12345

        mutating func next(_ range: Int) -> Int {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            return Int(seed >> 8) % (2 * range + 1) - range
        }
        mutating func values(_ count: Int, range: Int, scale: Float) -> [Float] { (0..<count).map { _ in Float(next(range)) * scale } }
    }

    /// The test's own description of an op, for the f64 reference.
    private enum RefOp {
        case lora(layout: MergeOp.Layout, a: [Float], b: [Float], scale: Float, magnitude: [Float]?)
        case replace([Float])
        case bias([Float], scale: Float)
    }

    private func mergeOp(_ op: RefOp, module: String) -> MergeOp {
        let rows = Self.rows, cols = Self.cols, r = Self.rank
        switch op {
        case let .lora(layout, a, b, scale, magnitude):
            let (outDim, inner) = layout == .direct ? (rows, cols) : (cols, rows)
            let m = LoraModule(path: module, a: .memory(values: a, shape: [r, inner]), b: .memory(values: b, shape: [outDim, r]),
                               isEmbedding: false, bias: nil, magnitude: magnitude.map { .memory(values: $0, shape: [$0.count]) },
                               rank: r, scaling: Double(scale))
            return MergeOp(adapter: "test", module: module, action: .lora(m, layout: layout, scale: Double(scale), outDim: outDim, inner: inner))
        case let .replace(v):
            return MergeOp(adapter: "test", module: module, action: .replace(.memory(values: v, shape: [rows, cols])))
        case let .bias(v, scale):
            return MergeOp(adapter: "test", module: module, action: .addBias(.memory(values: v, shape: [v.count]), scale: Double(scale)))
        }
    }

    /// The engine's semantics in f64: each LoRA adds s·B·A (or its transpose); DoRA then
    /// scales rows (direct) or columns (transposed) by m / ‖V‖, where V is the rows before
    /// the ops (an op after the first) or so far (the first op) plus this op's delta.
    private func reference(base: [Float], rows: Int, cols: Int, ops: [RefOp]) -> [Double] {
        let original = base.map(Double.init)
        var cur = original
        let r = Self.rank
        for (k, op) in ops.enumerated() {
            switch op {
            case let .replace(v): cur = v.map(Double.init)
            case let .bias(v, scale): for i in cur.indices { cur[i] += Double(scale) * Double(v[i]) }
            case let .lora(layout, a, b, scale, magnitude):
                var delta = [Double](repeating: 0, count: rows * cols)
                for i in 0..<rows {
                    for j in 0..<cols {
                        var s = 0.0
                        for q in 0..<r {
                            s += layout == .direct ? Double(b[i * r + q]) * Double(a[q * cols + j]) : Double(a[q * rows + i]) * Double(b[j * r + q])
                        }
                        delta[i * cols + j] = Double(scale) * s
                    }
                }
                let source = k == 0 ? cur : original
                for i in cur.indices { cur[i] += delta[i] }
                guard let magnitude else { continue }
                let v = zip(source, delta).map { $0 + $1 }
                if layout == .direct {
                    for i in 0..<rows {
                        let norm = (0..<cols).reduce(0.0) { $0 + v[i * cols + $1] * v[i * cols + $1] }.squareRoot()
                        for j in 0..<cols { cur[i * cols + j] *= Double(magnitude[i]) / norm }
                    }
                } else {
                    for j in 0..<cols {
                        let norm = (0..<rows).reduce(0.0) { $0 + v[$1 * cols + j] * v[$1 * cols + j] }.squareRoot()
                        for i in 0..<rows { cur[i * cols + j] *= Double(magnitude[j]) / norm }
                    }
                }
            }
        }
        return cur
    }

    /// bf16 bits of x rounded once to nearest even (normal range).
    private func bf16(_ x: Double) -> UInt16 {
        guard x != 0, x.isFinite else { return UInt16(truncatingIfNeeded: Float(x).bitPattern >> 16) }
        let ulp = Double(sign: .plus, exponent: x.exponent - 7, significand: 1)
        let rounded = (x / ulp).rounded(.toNearestOrEven) * ulp
        return UInt16(truncatingIfNeeded: Float(rounded).bitPattern >> 16)
    }

    private func bf16Bytes(_ values: [Float]) -> [UInt8] {
        values.flatMap { v -> [UInt8] in let h = UInt16(truncatingIfNeeded: v.bitPattern >> 16); return [UInt8(h & 0xFF), UInt8(h >> 8)] }
    }

    /// Gathers a tensor's bytes; in-place regions hold at most `regionUnits` rows, so a
    /// tensor arrives in many pieces as it does across the writer's slots.
    private final class CollectingSink: TensorSink {
        var bytes: [UInt8] = []
        let regionUnits: Int
        init(regionUnits: Int) { self.regionUnits = regionUnits }
        func write(_ b: UnsafeRawBufferPointer) throws { bytes += b }
        func writeStable(_ b: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws {
            bytes += b
            after?(b)
        }
        func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int {
            let units = max(1, min(regionUnits, maxCount / granule))
            var region = [UInt8](repeating: 0xA5, count: units * granule)
            try region.withUnsafeMutableBytes { try fill($0) }
            bytes += region
            return region.count
        }
    }

    private struct Setup {
        var store: TensorStore
        var data: Data
    }

    private func makeBase() throws -> Setup {
        var d = Data()
        d.w = d.values(Self.rows * Self.cols, range: 64, scale: 1.0 / 16)
        d.bias = d.values(Self.biasCount, range: 64, scale: 1.0 / 16)
        let path = TestPaths.scratch(self) + "/base.safetensors"
        try SafetensorsWriter.write(path: path, tensors: [
            (TensorSpec(name: "w", dtype: .bf16, shape: [Self.rows, Self.cols]), bf16Bytes(d.w)),
            (TensorSpec(name: "bias", dtype: .bf16, shape: [Self.biasCount]), bf16Bytes(d.bias)),
        ], metadata: nil)
        return Setup(store: try TensorStore.open(path), data: d)
    }

    private func loraFactors(_ d: inout Data, layout: MergeOp.Layout) -> (a: [Float], b: [Float]) {
        let (outDim, inner) = layout == .direct ? (Self.rows, Self.cols) : (Self.cols, Self.rows)
        return (d.values(Self.rank * inner, range: 3, scale: 1.0 / 8), d.values(outDim * Self.rank, range: 3, scale: 1.0 / 8))
    }

    /// Merges `ops` into tensor `name` with several block sizes and region sizes; all must
    /// give the same bytes, which are returned.
    private func mergeEveryWay(_ setup: Setup, tensor name: String, ops: [RefOp], file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
        let entry = try XCTUnwrap(setup.store.entry(named: name))
        let merged = ops.enumerated().map { mergeOp($1, module: "module\($0)") }
        let cols = entry.info.shape.count > 1 ? entry.info.shape[1] : 1
        var first: [UInt8]?
        // One row per block, 3 rows and a bit, 17 rows, the default (128 rows here).
        for blockElements in [cols, 3 * cols + 1, 17 * cols, MergeEngine.defaultBlockElements] {
            for regionUnits in [1, 37, Int.max] {
                let engine = MergeEngine(safe: false, blockElements: blockElements)
                let sink = CollectingSink(regionUnits: regionUnits)
                try engine.merge(entry: entry, store: setup.store, ops: merged, outDType: .bf16, sink: sink)
                XCTAssertEqual(sink.bytes.count, entry.info.elementCount * 2, "\(name): bytes written", file: file, line: line)
                XCTAssertEqual(engine.nonFiniteValues, 0, file: file, line: line)
                if let first {
                    XCTAssertTrue(sink.bytes == first, "\(name): blocks of \(blockElements) elements, regions of \(regionUnits) rows give other bytes",
                                  file: file, line: line)
                } else {
                    first = sink.bytes
                }
            }
        }
        return first ?? []
    }

    private func assertExact(_ got: [UInt8], _ want: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count * 2, file: file, line: line)
        var mismatches = 0, firstBad: Int?
        for i in want.indices where UInt16(got[2 * i]) | UInt16(got[2 * i + 1]) << 8 != bf16(want[i]) {
            mismatches += 1
            if firstBad == nil { firstBad = i }
        }
        XCTAssertEqual(mismatches, 0, "\(what): \(mismatches) elements differ from the f64 reference rounded once (first at \(firstBad ?? -1))",
                       file: file, line: line)
    }

    /// DoRA divides by a norm, so f32 is not exact there: at most 1 bf16 ulp from the f64
    /// reference, and in only a few elements.
    private func assertClose(_ got: [UInt8], _ want: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        var off = 0
        for i in want.indices {
            let g = Int16(bitPattern: UInt16(got[2 * i]) | UInt16(got[2 * i + 1]) << 8), w = Int16(bitPattern: bf16(want[i]))
            if g != w {
                off += 1
                XCTAssertLessThanOrEqual(abs(Int(g) - Int(w)), 1, "\(what): element \(i) is more than 1 ulp off", file: file, line: line)
                if abs(Int(g) - Int(w)) > 1 { return }
            }
        }
        XCTAssertLessThan(off, want.count / 1000, "\(what): \(off) elements off by 1 ulp", file: file, line: line)
    }

    func testDirectLoRASpanningBlocksMatchesExactReference() throws {
        var s = try makeBase()
        let (a, b) = loraFactors(&s.data, layout: .direct)
        let ops: [RefOp] = [.lora(layout: .direct, a: a, b: b, scale: 0.5, magnitude: nil)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        let want = reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops)
        assertExact(got, want, "direct LoRA")
        // Not vacuous: the merge changed the tensor and some results needed rounding.
        XCTAssertNotEqual(got, bf16Bytes(s.data.w))
        XCTAssertTrue(want.contains { Double(Float(bitPattern: UInt32(bf16($0)) << 16)) != $0 }, "some values round")
    }

    func testTransposedLoRASpanningBlocksMatchesExactReference() throws {
        var s = try makeBase()
        let (a, b) = loraFactors(&s.data, layout: .transposed)
        let ops: [RefOp] = [.lora(layout: .transposed, a: a, b: b, scale: 0.5, magnitude: nil)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        assertExact(got, reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops), "transposed LoRA")
    }

    func testReplaceThenLoRASpanningBlocksMatchesExactReference() throws {
        var s = try makeBase()
        let replacement = s.data.values(Self.rows * Self.cols, range: 64, scale: 1.0 / 16)
        let (a, b) = loraFactors(&s.data, layout: .direct)
        let ops: [RefOp] = [.replace(replacement), .lora(layout: .direct, a: a, b: b, scale: 0.5, magnitude: nil)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        assertExact(got, reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops), "replace + LoRA")
        assertExact(try mergeEveryWay(s, tensor: "w", ops: [.replace(replacement)]), replacement.map(Double.init), "replace")
    }

    func testBiasMatchesExactReference() throws {
        var s = try makeBase()
        let delta = s.data.values(Self.biasCount, range: 40, scale: 1.0 / 128)
        let ops: [RefOp] = [.bias(delta, scale: 0.5)]
        let got = try mergeEveryWay(s, tensor: "bias", ops: ops)
        assertExact(got, reference(base: s.data.bias, rows: Self.biasCount, cols: 1, ops: ops), "bias")
    }

    func testDoRARowsSpanningBlocksAreBlockIndependentAndClose() throws {
        var s = try makeBase()
        let (a, b) = loraFactors(&s.data, layout: .direct)
        let magnitude = s.data.values(Self.rows, range: 64, scale: 1.0 / 8).map { abs($0) + 1 }
        let ops: [RefOp] = [.lora(layout: .direct, a: a, b: b, scale: 0.5, magnitude: magnitude)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        assertClose(got, reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops), "DoRA rows")
    }

    func testDoRAColumnsAreBlockIndependentAndClose() throws {
        var s = try makeBase()
        let (a, b) = loraFactors(&s.data, layout: .transposed)
        let magnitude = s.data.values(Self.cols, range: 64, scale: 1.0 / 8).map { abs($0) + 1 }
        let ops: [RefOp] = [.lora(layout: .transposed, a: a, b: b, scale: 0.5, magnitude: magnitude)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        assertClose(got, reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops), "DoRA columns")
    }

    func testLoRAThenDoRAUsesTheOriginalRowsInEveryBlock() throws {
        var s = try makeBase()
        let (a1, b1) = loraFactors(&s.data, layout: .direct)
        let (a2, b2) = loraFactors(&s.data, layout: .direct)
        let magnitude = s.data.values(Self.rows, range: 64, scale: 1.0 / 8).map { abs($0) + 1 }
        let ops: [RefOp] = [.lora(layout: .direct, a: a1, b: b1, scale: 0.5, magnitude: nil),
                            .lora(layout: .direct, a: a2, b: b2, scale: 0.25, magnitude: magnitude)]
        let got = try mergeEveryWay(s, tensor: "w", ops: ops)
        assertClose(got, reference(base: s.data.w, rows: Self.rows, cols: Self.cols, ops: ops), "LoRA + DoRA")
    }

    func testZeroNormWarningsComeInRowOrderFromEveryBlock() throws {
        var s = try makeBase()
        // B = 0 (no delta) and some base rows zeroed: their DoRA norms are 0. Rows 40 and 60
        // are in different writer regions (50 rows each) and blocks (7 rows).
        let a = s.data.values(Self.rank * Self.cols, range: 3, scale: 1.0 / 8)
        let b = [Float](repeating: 0, count: Self.rows * Self.rank)
        let zeroRows = [3, 40, 60, 400]
        for row in zeroRows { for j in 0..<Self.cols { s.data.w[row * Self.cols + j] = 0 } }
        let path = TestPaths.scratch(self) + "/zero.safetensors"
        try SafetensorsWriter.write(path: path, tensors: [(TensorSpec(name: "w", dtype: .bf16, shape: [Self.rows, Self.cols]), bf16Bytes(s.data.w))],
                                    metadata: nil)
        let store = try TensorStore.open(path)
        let op = mergeOp(.lora(layout: .direct, a: a, b: b, scale: 1, magnitude: [Float](repeating: 1, count: Self.rows)), module: "m")
        let (_, warnings) = try Warnings.collectForwarding {
            try MergeEngine(safe: false, blockElements: 7 * Self.cols)
                .merge(entry: store.entry(named: "w")!, store: store, ops: [op], outDType: .bf16, sink: CollectingSink(regionUnits: 50))
        }
        XCTAssertEqual(warnings, zeroRows.map { "DoRA module m: zero weight norm at index \($0) gives non-finite weights" })
        XCTAssertThrowsError(try MergeEngine(safe: true, blockElements: 7 * Self.cols)
            .merge(entry: store.entry(named: "w")!, store: store, ops: [op], outDType: .bf16, sink: CollectingSink(regionUnits: 50))) { error in
            // The first zero row, though a later block on another core may fail too.
            XCTAssertTrue("\(error)".contains("module m: weight norm is zero at index 3 "), "\(error)")
        }
    }
}
