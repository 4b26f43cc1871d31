import Foundation
import XCTest
@testable import OpConvertKit

/// Every ABI v3 backward kernel of the CPU plugin against central finite differences of its
/// forward, evaluated in double (TransformerReference): for a random cotangent R, the kernel's
/// gradient of L = sum(forward(inputs) * R) must match (L(x + h) - L(x - h)) / 2h per input.
/// The double backward references `plugin check` uses are held to the same differences.
final class TransformerKernelGradientTests: XCTestCase {
    var ctx: KernelContext!
    var state: UInt64 = 0x5EED_1234

    override func setUpWithError() throws {
        ctx = try KernelPlugin.load(path: nil).makeContext(threads: 1)
        XCTAssertTrue(ctx.supportsTransformerKernels)
    }

    func random(_ n: Int, scale: Float = 1) -> [Float] {
        (0..<n).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Float(Double(z >> 11) / Double(1 << 53) * 2 - 1) * scale
        }
    }

    func upload(_ x: [Float]) throws -> DeviceBuffer {
        let b = try ctx.alloc(count: x.count)
        try ctx.upload(x, to: b)
        return b
    }

    /// Central differences of `loss` at `x` (step 1e-6 in double).
    func numericGradient(_ x: [Float], _ loss: ([Double]) -> Double) -> [Double] {
        var p = x.map(Double.init)
        return (0..<x.count).map { i in
            let x0 = p[i], h = 1e-6
            p[i] = x0 + h
            let up = loss(p)
            p[i] = x0 - h
            let down = loss(p)
            p[i] = x0
            return (up - down) / (2 * h)
        }
    }

    func dot(_ a: [Double], _ r: [Float]) -> Double { zip(a, r).reduce(0) { $0 + $1.0 * Double($1.1) } }

    /// Within 1e-4 of the largest gradient entry plus 1e-4 of each entry.
    func assertClose(_ got: [Float], _ want: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        assertClose(got.map(Double.init), want, what, file: file, line: line)
    }

    func assertClose(_ got: [Double], _ want: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        let top = want.reduce(0) { max($0, abs($1)) }
        XCTAssertGreaterThan(top, 1e-3, "\(what): a vanishing gradient checks nothing", file: file, line: line)
        for i in 0..<min(got.count, want.count) where abs(got[i] - want[i]) > 1e-4 * (top + abs(want[i])) {
            XCTFail("\(what)[\(i)]: got \(got[i]), finite differences give \(want[i])", file: file, line: line)
            return
        }
    }

    func testRMSNormBackwardMatchesFiniteDifferences() throws {
        let (rows, dim, eps) = (3, 7, 1e-5)
        let x = random(rows * dim, scale: 2), w = random(dim), r = random(rows * dim)
        let bx = try upload(x), bw = try upload(w), y = try ctx.alloc(count: rows * dim), rstd = try ctx.alloc(count: rows)
        try ctx.rmsNormForward(rows: rows, dim: dim, eps: Float(eps), x: bx, weight: bw, y: y, rstd: rstd)
        let dx = try ctx.alloc(count: rows * dim), dw = try ctx.alloc(count: dim)
        try ctx.rmsNormBackward(rows: rows, dim: dim, x: bx, weight: bw, rstd: rstd, dy: try upload(r), dx: dx, dweight: dw)
        let wd = w.map(Double.init), xd = x.map(Double.init)
        let numX = numericGradient(x) { dot(TransformerReference.rmsNormForward(x: $0, w: wd, rows: rows, dim: dim, eps: eps).y, r) }
        let numW = numericGradient(w) { dot(TransformerReference.rmsNormForward(x: xd, w: $0, rows: rows, dim: dim, eps: eps).y, r) }
        assertClose(try ctx.download(dx), numX, "rmsnorm dx")
        assertClose(try ctx.download(dw), numW, "rmsnorm dw")
        let rstdD = TransformerReference.rmsNormForward(x: xd, w: wd, rows: rows, dim: dim, eps: eps).rstd
        let ref = TransformerReference.rmsNormBackward(x: xd, w: wd, rstd: rstdD, dy: r.map(Double.init), rows: rows, dim: dim)
        assertClose(ref.dx, numX, "reference rmsnorm dx")
        assertClose(ref.dw, numW, "reference rmsnorm dw")
    }

    func testRoPEInverseIsTheTransposeAndTheGradient() throws {
        let (rows, heads, hd, tableRows) = (4, 2, 6, 9)
        let half = hd / 2
        let cos = (0..<(tableRows * half)).map { i in Float(Foundation.cos(Double(i / half) * pow(10000, -Double(i % half) / Double(half)))) }
        let sin = (0..<(tableRows * half)).map { i in Float(Foundation.sin(Double(i / half) * pow(10000, -Double(i % half) / Double(half)))) }
        let positions: [Int32] = [0, 8, 3, 3]
        let x = random(rows * heads * hd), r = random(rows * heads * hd)
        let bp = try ctx.uploadInt32(positions), bc = try upload(cos), bs = try upload(sin)
        // The backward is the inverse applied to the cotangent.
        let br = try upload(r)
        try ctx.rope(rows: rows, heads: heads, headDim: hd, x: br, positions: bp, tableRows: tableRows, cos: bc, sin: bs, inverse: true)
        let cd = cos.map(Double.init), sd = sin.map(Double.init)
        let num = numericGradient(x) {
            dot(TransformerReference.rope(x: $0, positions: positions, cos: cd, sin: sd, rows: rows, heads: heads, headDim: hd, inverse: false), r)
        }
        assertClose(try ctx.download(br), num, "rope backward")
        // <rope(x), r> == <x, rope_inverse(r)>.
        let bx = try upload(x)
        try ctx.rope(rows: rows, heads: heads, headDim: hd, x: bx, positions: bp, tableRows: tableRows, cos: bc, sin: bs, inverse: false)
        let lhs = dot(try ctx.download(bx).map(Double.init), r), rhs = dot(try ctx.download(br).map(Double.init), x)
        XCTAssertEqual(lhs, rhs, accuracy: 1e-5 * max(1, abs(lhs)))
    }

    func attentionCase(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int) throws {
        let s = TransformerReference.AttentionShape(batch: batch, seq: seq, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let scale = 1 / Double(headDim).squareRoot()
        let q = random(s.qCount, scale: 1.5), k = random(s.kvCount, scale: 1.5), v = random(s.kvCount), r = random(s.qCount)
        let bq = try upload(q), bk = try upload(k), bv = try upload(v)
        let probs = try ctx.alloc(count: s.probsCount), out = try ctx.alloc(count: s.qCount)
        try ctx.attentionForward(batch: batch, seq: seq, heads: heads, kvHeads: kvHeads, headDim: headDim, scale: Float(scale),
                                 q: bq, k: bk, v: bv, probs: probs, out: out)
        let dq = try ctx.alloc(count: s.qCount), dk = try ctx.alloc(count: s.kvCount), dv = try ctx.alloc(count: s.kvCount)
        try ctx.attentionBackward(batch: batch, seq: seq, heads: heads, kvHeads: kvHeads, headDim: headDim, scale: Float(scale),
                                  q: bq, k: bk, v: bv, probs: probs, dout: try upload(r), dq: dq, dk: dk, dv: dv)
        let (qd, kd, vd) = (q.map(Double.init), k.map(Double.init), v.map(Double.init))
        let tag = "attention \(batch)x\(seq) heads \(heads)/\(kvHeads)"
        let numQ = numericGradient(q) { dot(TransformerReference.attentionForward(s, scale: scale, q: $0, k: kd, v: vd).out, r) }
        let numK = numericGradient(k) { dot(TransformerReference.attentionForward(s, scale: scale, q: qd, k: $0, v: vd).out, r) }
        let numV = numericGradient(v) { dot(TransformerReference.attentionForward(s, scale: scale, q: qd, k: kd, v: $0).out, r) }
        let p = TransformerReference.attentionForward(s, scale: scale, q: qd, k: kd, v: vd).probs
        let ref = TransformerReference.attentionBackward(s, scale: scale, q: qd, k: kd, v: vd, probs: p, dout: r.map(Double.init))
        assertClose(try ctx.download(dv), numV, "\(tag) dv")
        assertClose(ref.dv, numV, "reference \(tag) dv")
        guard seq > 1 else {
            // One key: the softmax is 1 whatever q and k are, so their gradients are exactly zero.
            XCTAssertEqual(try ctx.download(dq), [Float](repeating: 0, count: s.qCount), "\(tag) dq")
            XCTAssertEqual(try ctx.download(dk), [Float](repeating: 0, count: s.kvCount), "\(tag) dk")
            return
        }
        assertClose(try ctx.download(dq), numQ, "\(tag) dq")
        assertClose(try ctx.download(dk), numK, "\(tag) dk")
        assertClose(ref.dq, numQ, "reference \(tag) dq")
        assertClose(ref.dk, numK, "reference \(tag) dk")
    }

    func testAttentionBackwardMatchesFiniteDifferences() throws {
        try attentionCase(batch: 1, seq: 5, heads: 4, kvHeads: 2, headDim: 3)
        try attentionCase(batch: 2, seq: 3, heads: 2, kvHeads: 1, headDim: 4)
        try attentionCase(batch: 1, seq: 1, heads: 1, kvHeads: 1, headDim: 2)
    }

    func testAttentionBackwardAcrossCausalBlocks() throws {
        // seq 70 crosses the CPU plugin's 64-row block; finite differences on a few inputs only.
        let s = TransformerReference.AttentionShape(batch: 1, seq: 70, heads: 2, kvHeads: 1, headDim: 4)
        let q = random(s.qCount), k = random(s.kvCount), v = random(s.kvCount), r = random(s.qCount)
        let probs = try ctx.alloc(count: s.probsCount), out = try ctx.alloc(count: s.qCount)
        let bq = try upload(q), bk = try upload(k), bv = try upload(v)
        try ctx.attentionForward(batch: 1, seq: 70, heads: 2, kvHeads: 1, headDim: 4, scale: 0.5, q: bq, k: bk, v: bv, probs: probs, out: out)
        let dq = try ctx.alloc(count: s.qCount), dk = try ctx.alloc(count: s.kvCount), dv = try ctx.alloc(count: s.kvCount)
        try ctx.attentionBackward(batch: 1, seq: 70, heads: 2, kvHeads: 1, headDim: 4, scale: 0.5, q: bq, k: bk, v: bv,
                                  probs: probs, dout: try upload(r), dq: dq, dk: dk, dv: dv)
        let ref = TransformerReference.attentionBackward(s, scale: 0.5, q: q.map(Double.init), k: k.map(Double.init),
                                                         v: v.map(Double.init),
                                                         probs: TransformerReference.attentionForward(s, scale: 0.5, q: q.map(Double.init),
                                                                                                      k: k.map(Double.init), v: v.map(Double.init)).probs,
                                                         dout: r.map(Double.init))
        assertClose(try ctx.download(dq), ref.dq, "dq seq 70")
        assertClose(try ctx.download(dk), ref.dk, "dk seq 70")
        assertClose(try ctx.download(dv), ref.dv, "dv seq 70")
        // Spot finite differences on keys at both sides of the block edge (rows 63, 64, 69).
        let (qd, vd) = (q.map(Double.init), v.map(Double.init))
        var kd = k.map(Double.init)
        let got = try ctx.download(dk)
        for row in [0, 63, 64, 69] {
            let i = row * 4 + 1, x0 = kd[i], h = 1e-6
            kd[i] = x0 + h
            let up = dot(TransformerReference.attentionForward(s, scale: 0.5, q: qd, k: kd, v: vd).out, r)
            kd[i] = x0 - h
            let down = dot(TransformerReference.attentionForward(s, scale: 0.5, q: qd, k: kd, v: vd).out, r)
            kd[i] = x0
            XCTAssertEqual(Double(got[i]), (up - down) / (2 * h), accuracy: 1e-4 * max(1, abs(Double(got[i]))), "dk row \(row)")
        }
    }

    func testSiLUGateBackwardMatchesFiniteDifferences() throws {
        let n = 40
        var g = random(n, scale: 5)
        g[0] = 12; g[1] = -12
        let u = random(n), r = random(n)
        let dg = try ctx.alloc(count: n), du = try ctx.alloc(count: n)
        try ctx.siluGateBackward(count: n, g: try upload(g), u: try upload(u), dh: try upload(r), dg: dg, du: du)
        let gd = g.map(Double.init), ud = u.map(Double.init)
        let numG = numericGradient(g) { dot(TransformerReference.siluGateForward(g: $0, u: ud), r) }
        let numU = numericGradient(u) { dot(TransformerReference.siluGateForward(g: gd, u: $0), r) }
        assertClose(try ctx.download(dg), numG, "silu dg")
        assertClose(try ctx.download(du), numU, "silu du")
        let ref = TransformerReference.siluGateBackward(g: gd, u: ud, dh: r.map(Double.init))
        assertClose(ref.dg, numG, "reference silu dg")
        assertClose(ref.du, numU, "reference silu du")
    }

    func testTokenCrossEntropyGradientMatchesFiniteDifferences() throws {
        let (rows, classes, gradScale) = (5, 7, 0.25)
        let x = random(rows * classes, scale: 3)
        let labels: [Int64] = [3, -100, 0, 6, -100]
        let out = try ctx.alloc(count: rows * classes)
        let (lossSum, count) = try ctx.tokenCrossEntropy(rows: rows, classes: classes, logits: try upload(x),
                                                         labels: try ctx.uploadLabels(labels), gradScale: Float(gradScale), dlogits: out)
        XCTAssertEqual(count, 3)
        let ref = TransformerReference.tokenXent(logits: x.map(Double.init), labels: labels, rows: rows, classes: classes,
                                                 ignoreIndex: -100, gradScale: gradScale)
        XCTAssertEqual(lossSum, ref.lossSum, accuracy: 1e-6 * ref.lossSum)
        let num = numericGradient(x) {
            gradScale * TransformerReference.tokenXent(logits: $0, labels: labels, rows: rows, classes: classes, ignoreIndex: -100,
                                                       gradScale: 1).lossSum
        }
        let got = try ctx.download(out)
        assertClose(got, num, "token_xent dlogits")
        assertClose(ref.dlogits, num, "reference token_xent dlogits")
        XCTAssertEqual(Array(got[classes..<(2 * classes)]), [Float](repeating: 0, count: classes), "ignored row is zero")
    }

    func testEmbeddingBackwardMatchesFiniteDifferences() throws {
        let (tokens, vocab, dim) = (6, 4, 3)
        let table = random(vocab * dim), r = random(tokens * dim)
        let ids: [Int32] = [2, 0, 2, 3, 2, 0]  // id 1 unused: its gradient is zero
        let dtable = try ctx.alloc(count: vocab * dim)
        try ctx.embeddingBackward(tokens: tokens, vocab: vocab, dim: dim, ids: try ctx.uploadInt32(ids), dout: try upload(r), dtable: dtable)
        let num = numericGradient(table) { dot(TransformerReference.embeddingForward(table: $0, ids: ids, dim: dim), r) }
        assertClose(try ctx.download(dtable), num, "embedding dtable")
        let out = try ctx.alloc(count: tokens * dim)
        try ctx.embeddingForward(tokens: tokens, vocab: vocab, dim: dim, table: try upload(table), ids: try ctx.uploadInt32(ids), out: out)
        XCTAssertEqual(try ctx.download(out), TransformerReference.embeddingForward(table: table.map(Double.init), ids: ids, dim: dim).map { Float($0) })
    }

    func testWrappersRefuseBadShapesBeforeThePlugin() throws {
        let small = try ctx.alloc(count: 4), ids = try ctx.uploadInt32([0, 1])
        XCTAssertThrowsError(try ctx.embeddingForward(tokens: 2, vocab: 2, dim: 4, table: small, ids: ids, out: small)) { error in
            XCTAssertTrue("\(error)".contains("embedding_forward"), "\(error)")
        }
        XCTAssertThrowsError(try ctx.attentionForward(batch: 1, seq: 1, heads: 3, kvHeads: 2, headDim: 1, scale: 1,
                                                      q: small, k: small, v: small, probs: small, out: small)) { error in
            XCTAssertTrue("\(error)".contains("not a multiple of kv_heads"), "\(error)")
        }
        // Labels must be int64 buffers, ids 4-byte ones.
        XCTAssertThrowsError(try ctx.tokenCrossEntropy(rows: 1, classes: 4, logits: small, labels: small, gradScale: 1, dlogits: small))
        XCTAssertThrowsError(try ctx.rope(rows: 1, heads: 1, headDim: 4, x: small, positions: try ctx.uploadLabels([0]), tableRows: 1,
                                          cos: small, sin: small, inverse: false))
        // A bad id reaches the plugin, which refuses it without writing.
        let table = try upload([1, 2, 3, 4]), out = try upload([9, 9])
        XCTAssertThrowsError(try ctx.embeddingForward(tokens: 1, vocab: 2, dim: 2, table: table, ids: try ctx.uploadInt32([2]), out: out)) { error in
            guard case PluginError.kernelFailed(_, let code, let message) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(code, -1)
            XCTAssertTrue(message.contains("token id 2"), message)
        }
        XCTAssertEqual(try ctx.download(out), [9, 9])
        try ctx.uploadInt32([1], to: ids)
        try ctx.embeddingForward(tokens: 1, vocab: 2, dim: 2, table: table, ids: ids, out: out)
        XCTAssertEqual(try ctx.download(out), [3, 4])
    }

    func testVersion2PluginLacksTheTransformerKernels() throws {
        let v2 = try KernelPlugin.open(try KernelPlugin.load(path: nil).path, versions: [2])
        XCTAssertEqual(v2.abiVersion, 2)
        let c = try v2.makeContext(threads: 1)
        XCTAssertFalse(c.supportsTransformerKernels)
        let x = try c.alloc(count: 4)
        XCTAssertThrowsError(try c.siluGateForward(count: 4, g: x, u: x, h: x)) { error in
            guard let e = error as? PluginError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.description, "plugin cpu-openblas (ABI v2) lacks the transformer kernels (needs v3)")
            XCTAssertEqual(e.exitStatus, .unsupported)
        }
        let report = PluginConformance(plugin: v2).run()
        XCTAssertEqual(report.failed, 0)
        XCTAssertFalse(report.cases.contains { $0.name.hasPrefix("attention") })
        XCTAssertTrue(report.notes.contains { $0.contains("transformer kernels (v3) are not checked") }, "\(report.notes)")
    }
}

/// The CPU plugin splits attention heads, token_xent rows and SiLU elements over its
/// threads; the results must not depend on how many it has.
final class TransformerKernelThreadingTests: XCTestCase {
    func run(threads: Int) throws -> [UInt8] {
        let ctx = try KernelPlugin.load(path: nil).makeContext(threads: threads)
        var state: UInt64 = 42
        func random(_ n: Int) -> [Float] {
            (0..<n).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 500
            }
        }
        func upload(_ x: [Float]) throws -> DeviceBuffer {
            let b = try ctx.alloc(count: x.count)
            try ctx.upload(x, to: b)
            return b
        }
        let s = TransformerReference.AttentionShape(batch: 3, seq: 80, heads: 4, kvHeads: 2, headDim: 16)
        let q = try upload(random(s.qCount)), k = try upload(random(s.kvCount)), v = try upload(random(s.kvCount))
        let probs = try ctx.alloc(count: s.probsCount), out = try ctx.alloc(count: s.qCount)
        try ctx.attentionForward(batch: 3, seq: 80, heads: 4, kvHeads: 2, headDim: 16, scale: 0.25, q: q, k: k, v: v, probs: probs, out: out)
        let dq = try ctx.alloc(count: s.qCount), dk = try ctx.alloc(count: s.kvCount), dv = try ctx.alloc(count: s.kvCount)
        try ctx.attentionBackward(batch: 3, seq: 80, heads: 4, kvHeads: 2, headDim: 16, scale: 0.25, q: q, k: k, v: v, probs: probs,
                                  dout: out, dq: dq, dk: dk, dv: dv)
        let n = 300_001
        let g = try upload(random(n)), u = try upload(random(n)), h = try ctx.alloc(count: n), du = try ctx.alloc(count: n)
        try ctx.siluGateForward(count: n, g: g, u: u, h: h)
        try ctx.siluGateBackward(count: n, g: g, u: u, dh: h, dg: g, du: du)
        let (rows, classes) = (300, 1001)
        let logits = try upload(random(rows * classes))
        let labels = try ctx.uploadLabels((0..<rows).map { $0 % 7 == 0 ? -100 : Int64($0 * 13 % classes) })
        let (loss, count) = try ctx.tokenCrossEntropy(rows: rows, classes: classes, logits: logits, labels: labels, gradScale: 0.01, dlogits: logits)
        XCTAssertEqual(count, rows - (rows + 6) / 7)
        return try [probs, out, dq, dk, dv, h, g, du, logits].flatMap { try ctx.downloadBytes($0) } + withUnsafeBytes(of: loss) { [UInt8]($0) }
    }

    func testResultsDoNotDependOnTheThreadCount() throws {
        let one = try run(threads: 1), two = try run(threads: 2), three = try run(threads: 3)
        XCTAssertTrue(one == two, "1 vs 2 threads")
        XCTAssertTrue(one == three, "1 vs 3 threads")
    }
}
