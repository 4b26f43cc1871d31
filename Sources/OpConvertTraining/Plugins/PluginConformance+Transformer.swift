import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI
import Foundation

/// Double-precision references of the ABI v3 transformer kernels (opc_plugin.h), written
/// straight from the header's formulas. `plugin check` compares every plugin against them;
/// the gradient tests check the backward ones against finite differences of the forward ones.
package enum TransformerReference {
    package static func embeddingForward(table: [Double], ids: [Int32], dim: Int) -> [Double] {
        ids.flatMap { id in table[(Int(id) * dim)..<((Int(id) + 1) * dim)] }
    }

    static func embeddingBackward(ids: [Int32], dout: [Double], dtable: [Double], dim: Int) -> [Double] {
        var d = dtable
        for (t, id) in ids.enumerated() { for j in 0..<dim { d[Int(id) * dim + j] += dout[t * dim + j] } }
        return d
    }

    package static func rmsNormForward(x: [Double], w: [Double], rows: Int, dim: Int, eps: Double) -> (y: [Double], rstd: [Double]) {
        var y = x, rstd = [Double](repeating: 0, count: rows)
        for i in 0..<rows {
            let ms = (0..<dim).reduce(0.0) { $0 + x[i * dim + $1] * x[i * dim + $1] } / Double(dim)
            rstd[i] = 1 / (ms + eps).squareRoot()
            for j in 0..<dim { y[i * dim + j] = w[j] * x[i * dim + j] * rstd[i] }
        }
        return (y, rstd)
    }

    /// dx and the dw increment, from x and a given rstd.
    package static func rmsNormBackward(x: [Double], w: [Double], rstd: [Double], dy: [Double], rows: Int,
                                dim: Int) -> (dx: [Double], dw: [Double]) {
        var dx = x, dw = [Double](repeating: 0, count: dim)
        for i in 0..<rows {
            let r = rstd[i]
            let mean = (0..<dim).reduce(0.0) { $0 + w[$1] * dy[i * dim + $1] * x[i * dim + $1] } / Double(dim)
            for j in 0..<dim {
                dx[i * dim + j] = r * (w[j] * dy[i * dim + j] - x[i * dim + j] * r * r * mean)
                dw[j] += dy[i * dim + j] * x[i * dim + j] * r
            }
        }
        return (dx, dw)
    }

    package static func rope(x: [Double], positions: [Int32], cos: [Double], sin: [Double], rows: Int, heads: Int,
                     headDim: Int, inverse: Bool) -> [Double] {
        var y = x
        let half = headDim / 2
        for r in 0..<rows {
            let p = Int(positions[r])
            for h in 0..<heads {
                let base = (r * heads + h) * headDim
                for i in 0..<half {
                    let c = cos[p * half + i], s = (inverse ? -1 : 1) * sin[p * half + i]
                    let lo = x[base + i], hi = x[base + half + i]
                    y[base + i] = lo * c - hi * s
                    y[base + half + i] = hi * c + lo * s
                }
            }
        }
        return y
    }

    package struct AttentionShape {
        package var batch, seq, heads, kvHeads, headDim: Int

        package init(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int) {
            self.batch = batch; self.seq = seq; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        }
        package var group: Int { heads / kvHeads }
        package var qCount: Int { batch * seq * heads * headDim }
        package var kvCount: Int { batch * seq * kvHeads * headDim }
        package var probsCount: Int { batch * heads * seq * seq }
        package func qIndex(_ b: Int, _ t: Int, _ h: Int, _ d: Int) -> Int { ((b * seq + t) * heads + h) * headDim + d }
        package func kvIndex(_ b: Int, _ t: Int, _ g: Int, _ d: Int) -> Int { ((b * seq + t) * kvHeads + g) * headDim + d }
        package func pIndex(_ b: Int, _ h: Int, _ i: Int, _ j: Int) -> Int { ((b * heads + h) * seq + i) * seq + j }
    }

    package static func attentionForward(_ s: AttentionShape, scale: Double, q: [Double], k: [Double],
                                 v: [Double]) -> (probs: [Double], out: [Double]) {
        var probs = [Double](repeating: 0, count: s.probsCount), out = [Double](repeating: 0, count: s.qCount)
        for b in 0..<s.batch {
            for h in 0..<s.heads {
                let g = h / s.group
                for i in 0..<s.seq {
                    var scores = [Double](repeating: 0, count: i + 1)
                    for j in 0...i {
                        var dot = 0.0
                        for d in 0..<s.headDim { dot += q[s.qIndex(b, i, h, d)] * k[s.kvIndex(b, j, g, d)] }
                        scores[j] = scale * dot
                    }
                    let mx = scores.max()!
                    let e = scores.map { exp($0 - mx) }, sum = e.reduce(0, +)
                    for j in 0...i { probs[s.pIndex(b, h, i, j)] = e[j] / sum }
                    for d in 0..<s.headDim {
                        var acc = 0.0
                        for j in 0...i { acc += probs[s.pIndex(b, h, i, j)] * v[s.kvIndex(b, j, g, d)] }
                        out[s.qIndex(b, i, h, d)] = acc
                    }
                }
            }
        }
        return (probs, out)
    }

    package static func attentionBackward(_ s: AttentionShape, scale: Double, q: [Double], k: [Double], v: [Double],
                                  probs: [Double], dout: [Double]) -> (dq: [Double], dk: [Double], dv: [Double]) {
        var dq = [Double](repeating: 0, count: s.qCount)
        var dk = [Double](repeating: 0, count: s.kvCount), dv = dk
        for b in 0..<s.batch {
            for h in 0..<s.heads {
                let g = h / s.group
                for i in 0..<s.seq {
                    var dp = [Double](repeating: 0, count: i + 1)
                    for j in 0...i {
                        for d in 0..<s.headDim { dp[j] += dout[s.qIndex(b, i, h, d)] * v[s.kvIndex(b, j, g, d)] }
                    }
                    let rowsum = (0...i).reduce(0.0) { $0 + dp[$1] * probs[s.pIndex(b, h, i, $1)] }
                    for j in 0...i {
                        let p = probs[s.pIndex(b, h, i, j)], ds = p * (dp[j] - rowsum)
                        for d in 0..<s.headDim {
                            dq[s.qIndex(b, i, h, d)] += scale * ds * k[s.kvIndex(b, j, g, d)]
                            dk[s.kvIndex(b, j, g, d)] += scale * ds * q[s.qIndex(b, i, h, d)]
                            dv[s.kvIndex(b, j, g, d)] += p * dout[s.qIndex(b, i, h, d)]
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    static func sigmoid(_ g: Double) -> Double { 1 / (1 + exp(-g)) }

    package static func siluGateForward(g: [Double], u: [Double]) -> [Double] {
        zip(g, u).map { $0 * sigmoid($0) * $1 }
    }

    package static func siluGateBackward(g: [Double], u: [Double], dh: [Double]) -> (dg: [Double], du: [Double]) {
        var dg = g, du = u
        for i in g.indices {
            let s = sigmoid(g[i])
            dg[i] = dh[i] * u[i] * s * (1 + g[i] * (1 - s))
            du[i] = dh[i] * g[i] * s
        }
        return (dg, du)
    }

    package static func tokenXent(logits: [Double], labels: [Int64], rows: Int, classes: Int, ignoreIndex: Int64,
                          gradScale: Double) -> (dlogits: [Double], lossSum: Double, count: Int) {
        var d = [Double](repeating: 0, count: rows * classes), total = 0.0, count = 0
        for i in 0..<rows where labels[i] != ignoreIndex {
            let row = Array(logits[(i * classes)..<((i + 1) * classes)])
            let mx = row.max()!, lse = mx + log(row.reduce(0) { $0 + exp($1 - mx) })
            let label = Int(labels[i])
            total += lse - row[label]
            count += 1
            for j in 0..<classes { d[i * classes + j] = (exp(row[j] - lse) - (j == label ? 1 : 0)) * gradScale }
        }
        return (d, total, count)
    }
}

// MARK: - The v3 cases of `plugin check`

extension Suite {
    func transformer(_ ctx: KernelContext) {
        embedding(ctx)
        rmsNorm(ctx)
        rope(ctx)
        attention(ctx)
        siluGate(ctx)
        siluSweep(ctx)
        tokenXent(ctx)
        transformerErrors(ctx)
        transformerDeterminism(ctx)
    }

    /// int32 values in a fresh buffer; `offset`: starting 4 bytes into its allocation.
    func deviceInt32(_ ctx: KernelContext, _ values: [Int32], offset: Bool) throws -> DeviceBuffer {
        let whole = try ctx.uploadInt32([Int32](repeating: -7, count: offset ? 1 : 0) + values + [-7])
        return whole.slice(offset: offset ? 1 : 0, count: values.count)
    }

    func doubles(_ x: [Float]) -> [Double] { x.map(Double.init) }

    /// Tolerance `rel` of each value plus `rel` of the largest one (for sums that cancel).
    func scaled(_ want: [Double], _ rel: Double) -> (Int) -> Double {
        let top = want.reduce(0) { max($0, abs($1)) }
        return { i in rel * (abs(want[i]) + top) + 1e-30 }
    }

    // MARK: Embedding

    func embedding(_ ctx: KernelContext) {
        for (tokens, vocab, dim) in [(1, 1, 1), (7, 11, 5), (33, 50, 17)] {
            let tag = "\(tokens) tokens, vocab \(vocab), dim \(dim) +4B"
            check("embedding_forward \(tag)") {
                let table = random(vocab * dim), ids = (0..<tokens).map { _ in Int32(rng.int(vocab)) }
                let dt = try device(ctx, table, offset: true), di = try deviceInt32(ctx, ids, offset: true)
                let out = try device(ctx, random(tokens * dim), offset: true)
                try ctx.embeddingForward(tokens: tokens, vocab: vocab, dim: dim, table: dt, ids: di, out: out)
                return compare(try ctx.download(out), TransformerReference.embeddingForward(table: doubles(table), ids: ids, dim: dim)) { _ in 0 }
            }
            check("embedding_backward \(tag), repeated ids, accumulates") {
                let ids = (0..<tokens).map { t in t % 3 == 0 ? Int32(0) : Int32(rng.int(vocab)) }
                let dout = random(tokens * dim), dtable = random(vocab * dim)
                let di = try deviceInt32(ctx, ids, offset: true), dd = try device(ctx, dout, offset: true)
                let dt = try device(ctx, dtable, offset: true)
                try ctx.embeddingBackward(tokens: tokens, vocab: vocab, dim: dim, ids: di, dout: dd, dtable: dt)
                let want = TransformerReference.embeddingBackward(ids: ids, dout: doubles(dout), dtable: doubles(dtable), dim: dim)
                return compare(try ctx.download(dt), want) { i in Double(tokens + 1) * Self.eps * (abs(want[i]) + 1) }
            }
        }
    }

    // MARK: RMSNorm

    func rmsNorm(_ ctx: KernelContext) {
        let eps: Float = 1e-5
        for (rows, dim) in [(1, 1), (3, 5), (17, 65), (64, 257)] {
            for inPlace in [false, true] {
                check("rmsnorm_forward \(rows)x\(dim) +4B" + (inPlace ? " in place" : "")) {
                    let x = random(rows * dim, scale: 3), w = random(dim)
                    let dx = try device(ctx, x, offset: true), dw = try device(ctx, w, offset: true)
                    let y = inPlace ? dx : try device(ctx, random(rows * dim), offset: true)
                    let rstd = try device(ctx, random(rows), offset: true)
                    try ctx.rmsNormForward(rows: rows, dim: dim, eps: eps, x: dx, weight: dw, y: y, rstd: rstd)
                    let (want, wantR) = TransformerReference.rmsNormForward(x: doubles(x), w: doubles(w), rows: rows, dim: dim, eps: Double(eps))
                    if let e = compare(try ctx.download(rstd), wantR, tol: { i in 2 * Self.eps * wantR[i] }) { return "rstd: \(e)" }
                    return compare(try ctx.download(y), want) { i in 4 * Self.eps * abs(want[i]) + 1e-30 }
                }
            }
            for (inPlace, withDW) in [(false, true), (true, false)] {
                check("rmsnorm_backward \(rows)x\(dim) +4B" + (inPlace ? " dx=dy" : "") + (withDW ? " dw accumulates" : " dw NULL")) {
                    let x = random(rows * dim, scale: 3), w = random(dim), dyv = random(rows * dim)
                    let (_, r) = TransformerReference.rmsNormForward(x: doubles(x), w: doubles(w), rows: rows, dim: dim, eps: Double(eps))
                    let rstd = r.map { Float($0) }, dw0 = random(dim)
                    let bx = try device(ctx, x, offset: true), bw = try device(ctx, w, offset: true)
                    let br = try device(ctx, rstd, offset: true), bdy = try device(ctx, dyv, offset: true)
                    let bdx = inPlace ? bdy : try device(ctx, random(rows * dim), offset: true)
                    let bdw = withDW ? try device(ctx, dw0, offset: true) : nil
                    try ctx.rmsNormBackward(rows: rows, dim: dim, x: bx, weight: bw, rstd: br, dy: bdy, dx: bdx, dweight: bdw)
                    let (wantDX, dwInc) = TransformerReference.rmsNormBackward(x: doubles(x), w: doubles(w), rstd: doubles(rstd),
                                                                              dy: doubles(dyv), rows: rows, dim: dim)
                    // dx = r w dy - x r^3 mean(w dy x) may cancel: tolerance from the terms.
                    var terms = [Double](repeating: 0, count: rows * dim)
                    for i in 0..<rows {
                        let r = Double(rstd[i])
                        let absMean = (0..<dim).reduce(0.0) { $0 + abs(Double(w[$1]) * Double(dyv[i * dim + $1]) * Double(x[i * dim + $1])) } / Double(dim)
                        for j in 0..<dim {
                            terms[i * dim + j] = abs(r * Double(w[j]) * Double(dyv[i * dim + j])) + abs(Double(x[i * dim + j])) * r * r * r * absMean
                        }
                    }
                    if let e = compare(try ctx.download(bdx), wantDX, tol: { i in 8 * Self.eps * terms[i] + 1e-30 }) { return "dx: \(e)" }
                    guard let bdw else { return nil }
                    let wantDW = zip(dw0, dwInc).map { Double($0) + $1 }
                    return compare(try ctx.download(bdw), wantDW, tol: scaled(wantDW, 8 * Self.eps)).map { "dw: \($0)" }
                }
            }
        }
    }

    // MARK: RoPE

    /// cos/sin tables [rows, half] as transformers makes them (theta 10000).
    func ropeTables(rows: Int, half: Int) -> ([Float], [Float]) {
        var c = [Float](), s = [Float]()
        for p in 0..<rows {
            for i in 0..<half {
                let angle = Double(p) * pow(10000, -Double(2 * i) / Double(2 * half))
                c.append(Float(Foundation.cos(angle))); s.append(Float(Foundation.sin(angle)))
            }
        }
        return (c, s)
    }

    func rope(_ ctx: KernelContext) {
        for (rows, heads, hd) in [(1, 1, 2), (17, 4, 8), (5, 3, 64)] {
            let tableRows = 40
            let (c, s) = ropeTables(rows: tableRows, half: hd / 2)
            for inverse in [false, true] {
                check("rope \(rows)x\(heads)x\(hd) +4B" + (inverse ? " inverse" : "")) {
                    let x = random(rows * heads * hd), pos = (0..<rows).map { _ in Int32(rng.int(tableRows)) }
                    let bx = try device(ctx, x, offset: true), bp = try deviceInt32(ctx, pos, offset: true)
                    let bc = try device(ctx, c, offset: true), bs = try device(ctx, s, offset: true)
                    try ctx.rope(rows: rows, heads: heads, headDim: hd, x: bx, positions: bp, tableRows: tableRows, cos: bc, sin: bs, inverse: inverse)
                    let want = TransformerReference.rope(x: doubles(x), positions: pos, cos: doubles(c), sin: doubles(s),
                                                         rows: rows, heads: heads, headDim: hd, inverse: inverse)
                    if let e = compare(try ctx.download(bx), want, tol: { _ in 4 * Self.eps }) { return e }
                    // The inverse undoes the forward (the rotation is orthogonal).
                    try ctx.rope(rows: rows, heads: heads, headDim: hd, x: bx, positions: bp, tableRows: tableRows, cos: bc, sin: bs, inverse: !inverse)
                    return compare(try ctx.download(bx), doubles(x)) { _ in 8 * Self.eps }.map { "round trip: \($0)" }
                }
            }
        }
    }

    // MARK: Attention

    func attention(_ ctx: KernelContext) {
        let shapes: [(Int, Int, Int, Int, Int)] = [(1, 1, 1, 1, 1), (2, 17, 4, 2, 8), (1, 17, 4, 1, 5), (2, 5, 2, 2, 3),
                                                    (1, 130, 2, 1, 16), (1, 1, 4, 2, 6)]
        check("attention_forward scores spread over +-200 (softmax underflow)") {
            let shape = TransformerReference.AttentionShape(batch: 1, seq: 9, heads: 2, kvHeads: 1, headDim: 4)
            let q = random(shape.qCount, scale: 10), k = random(shape.kvCount, scale: 10), v = random(shape.kvCount)
            let bq = try device(ctx, q, offset: false), bk = try device(ctx, k, offset: false), bv = try device(ctx, v, offset: false)
            let bp = try ctx.alloc(count: shape.probsCount), bo = try ctx.alloc(count: shape.qCount)
            try ctx.attentionForward(batch: 1, seq: 9, heads: 2, kvHeads: 1, headDim: 4, scale: 1, q: bq, k: bk, v: bv, probs: bp, out: bo)
            let (wantP, wantO) = TransformerReference.attentionForward(shape, scale: 1, q: doubles(q), k: doubles(k), v: doubles(v))
            if let e = compare(try ctx.download(bp), wantP, tol: { i in wantP[i] == 0 ? 0 : 1e-5 * wantP[i] + 1e-7 }) { return "probs: \(e)" }
            return compare(try ctx.download(bo), wantO, tol: scaled(wantO, 1e-5)).map { "out: \($0)" }
        }
        for (b, t, h, kvh, d) in shapes {
            let shape = TransformerReference.AttentionShape(batch: b, seq: t, heads: h, kvHeads: kvh, headDim: d)
            let tag = "batch \(b), seq \(t), heads \(h)/kv \(kvh), head_dim \(d) +4B"
            let scale = Float(1 / Double(d).squareRoot())
            check("attention_forward \(tag), NaN outputs") {
                let q = random(shape.qCount, scale: 2), k = random(shape.kvCount, scale: 2), v = random(shape.kvCount)
                let bq = try device(ctx, q, offset: true), bk = try device(ctx, k, offset: true), bv = try device(ctx, v, offset: true)
                let nanP = [Float](repeating: .nan, count: shape.probsCount), nanO = [Float](repeating: .nan, count: shape.qCount)
                let bp = try device(ctx, nanP, offset: true), bo = try device(ctx, nanO, offset: true)
                try ctx.attentionForward(batch: b, seq: t, heads: h, kvHeads: kvh, headDim: d, scale: scale, q: bq, k: bk, v: bv, probs: bp, out: bo)
                let (wantP, wantO) = TransformerReference.attentionForward(shape, scale: Double(scale), q: doubles(q), k: doubles(k), v: doubles(v))
                // Zeros above the diagonal are exact (tolerance 0).
                if let e = compare(try ctx.download(bp), wantP, tol: { i in wantP[i] == 0 ? 0 : 1e-5 * wantP[i] + 1e-7 }) { return "probs: \(e)" }
                return compare(try ctx.download(bo), wantO, tol: scaled(wantO, 1e-5)).map { "out: \($0)" }
            }
            check("attention_backward \(tag), NaN outputs") {
                let q = random(shape.qCount, scale: 2), k = random(shape.kvCount, scale: 2), v = random(shape.kvCount)
                let dout = random(shape.qCount)
                let (p, _) = TransformerReference.attentionForward(shape, scale: Double(scale), q: doubles(q), k: doubles(k), v: doubles(v))
                let pf = p.map { Float($0) }
                let bq = try device(ctx, q, offset: true), bk = try device(ctx, k, offset: true), bv = try device(ctx, v, offset: true)
                let bp = try device(ctx, pf, offset: true), bd = try device(ctx, dout, offset: true)
                let nanQ = [Float](repeating: .nan, count: shape.qCount), nanKV = [Float](repeating: .nan, count: shape.kvCount)
                let dq = try device(ctx, nanQ, offset: true), dk = try device(ctx, nanKV, offset: true), dv = try device(ctx, nanKV, offset: true)
                try ctx.attentionBackward(batch: b, seq: t, heads: h, kvHeads: kvh, headDim: d, scale: scale, q: bq, k: bk, v: bv,
                                          probs: bp, dout: bd, dq: dq, dk: dk, dv: dv)
                let want = TransformerReference.attentionBackward(shape, scale: Double(scale), q: doubles(q), k: doubles(k), v: doubles(v),
                                                                  probs: doubles(pf), dout: doubles(dout))
                if let e = compare(try ctx.download(dq), want.dq, tol: scaled(want.dq, 2e-5)) { return "dq: \(e)" }
                if let e = compare(try ctx.download(dk), want.dk, tol: scaled(want.dk, 2e-5)) { return "dk: \(e)" }
                return compare(try ctx.download(dv), want.dv, tol: scaled(want.dv, 2e-5)).map { "dv: \($0)" }
            }
        }
    }

    // MARK: SiLU gate

    func siluGate(_ ctx: KernelContext) {
        for n in [1, 1001] {
            let tag = "\(n) +4B"
            for alias in ["", " h=g", " h=u"] {
                check("silu_gate_forward \(tag)\(alias)") {
                    var g = random(n, scale: 6)
                    let u = random(n)
                    if n > 4 { g[0] = 90; g[1] = -90; g[2] = 20; g[3] = -20 }  // exp overflows on one side
                    let bg = try device(ctx, g, offset: true), bu = try device(ctx, u, offset: true)
                    let bh = alias == " h=g" ? bg : alias == " h=u" ? bu : try device(ctx, random(n), offset: true)
                    try ctx.siluGateForward(count: n, g: bg, u: bu, h: bh)
                    let want = TransformerReference.siluGateForward(g: doubles(g), u: doubles(u))
                    return compare(try ctx.download(bh), want) { i in 4 * Self.eps * abs(want[i]) + 1e-30 }
                }
            }
            for alias in ["", " dg=g du=u", " dg=dh"] where n > 1 || alias.isEmpty {
                check("silu_gate_backward \(tag)\(alias)") {
                    var g = random(n, scale: 6)
                    let u = random(n), dh = random(n)
                    if n > 4 { g[0] = 90; g[1] = -90; g[2] = 20; g[3] = -20 }
                    let bg = try device(ctx, g, offset: true), bu = try device(ctx, u, offset: true), bdh = try device(ctx, dh, offset: true)
                    let bdg = alias == " dg=g du=u" ? bg : alias == " dg=dh" ? bdh : try device(ctx, random(n), offset: true)
                    let bdu = alias == " dg=g du=u" ? bu : try device(ctx, random(n), offset: true)
                    try ctx.siluGateBackward(count: n, g: bg, u: bu, dh: bdh, dg: bdg, du: bdu)
                    let want = TransformerReference.siluGateBackward(g: doubles(g), u: doubles(u), dh: doubles(dh))
                    // dg's terms: dh u s and dh u s g (1 - s), which may cancel.
                    let dgTol: (Int) -> Double = { i in
                        let s = TransformerReference.sigmoid(Double(g[i]))
                        return 8 * Self.eps * abs(Double(dh[i]) * Double(u[i])) * s * (1 + abs(Double(g[i])) * (1 - s)) + 1e-30
                    }
                    if let e = compare(try ctx.download(bdg), want.dg, tol: dgTol) { return "dg: \(e)" }
                    return compare(try ctx.download(bdu), want.du) { i in 4 * Self.eps * abs(want.du[i]) + 1e-30 }.map { "du: \($0)" }
                }
            }
        }
    }

    /// g over [-100, 100] in steps of 0.1: every range of exp the kernels meet. Values below
    /// 1e-30 may flush to zero (f32 exp overflows past 88.7, as torch's does).
    func siluSweep(_ ctx: KernelContext) {
        check("silu_gate forward and backward, g swept over [-100, 100]") {
            let g = (0...2000).map { Float(-100 + 0.1 * Double($0)) }, u = [Float](repeating: 1.5, count: 2001)
            let dh = [Float](repeating: -0.75, count: 2001)
            let bg = try device(ctx, g, offset: false), bu = try device(ctx, u, offset: false), bdh = try device(ctx, dh, offset: false)
            let h = try ctx.alloc(count: 2001), dg = try ctx.alloc(count: 2001), du = try ctx.alloc(count: 2001)
            try ctx.siluGateForward(count: 2001, g: bg, u: bu, h: h)
            try ctx.siluGateBackward(count: 2001, g: bg, u: bu, dh: bdh, dg: dg, du: du)
            let want = TransformerReference.siluGateForward(g: doubles(g), u: doubles(u))
            let back = TransformerReference.siluGateBackward(g: doubles(g), u: doubles(u), dh: doubles(dh))
            if let e = compare(try ctx.download(h), want, tol: { i in 4 * Self.eps * abs(want[i]) + 1e-30 }) { return "h: \(e)" }
            let dgTol: (Int) -> Double = { i in
                let s = TransformerReference.sigmoid(Double(g[i]))
                return 8 * Self.eps * 1.125 * s * (1 + abs(Double(g[i])) * (1 - s)) + 1e-30
            }
            if let e = compare(try ctx.download(dg), back.dg, tol: dgTol) { return "dg: \(e)" }
            return compare(try ctx.download(du), back.du) { i in 4 * Self.eps * abs(back.du[i]) + 1e-30 }.map { "du: \($0)" }
        }
    }

    // MARK: Token cross-entropy

    func tokenXent(_ ctx: KernelContext) {
        for (r, c) in [(1, 1), (3, 5), (17, 33), (64, 1000)] {
            for inPlace in [false, true] {
                check("token_xent \(r)x\(c) +4B, ignored rows" + (inPlace ? ", in place" : "")) {
                    let x = random(r * c, scale: 4)
                    let labels = (0..<r).map { i in i % 4 == 1 ? Int64(-100) : Int64(rng.int(c)) }
                    let bx = try device(ctx, x, offset: true), bl = try ctx.uploadLabels(labels)
                    let out = inPlace ? bx : try device(ctx, random(r * c), offset: true)
                    let gradScale: Float = 1 / 37
                    let (loss, count) = try ctx.tokenCrossEntropy(rows: r, classes: c, logits: bx, labels: bl, gradScale: gradScale, dlogits: out)
                    let want = TransformerReference.tokenXent(logits: doubles(x), labels: labels, rows: r, classes: c, ignoreIndex: -100,
                                                              gradScale: Double(gradScale))
                    if count != want.count { return "count \(count), want \(want.count)" }
                    if abs(loss - want.lossSum) > 1e-5 * max(1, abs(want.lossSum)) { return "loss sum \(loss), want \(want.lossSum)" }
                    return compare(try ctx.download(out), want.dlogits) { i in 1e-5 * abs(want.dlogits[i]) + 1e-7 * Double(gradScale) }
                }
            }
        }
        check("token_xent ignore_index -1, labels at 8-byte offset, NULL outputs") {
            let (r, c) = (5, 4)
            let x = random(r * c)
            let labels: [Int64] = [9, 3, -1, 1, -1, 0]  // slot 0 is padding
            let bl = try ctx.uploadLabels(labels).slice(offset: 1, count: r)
            let bx = try device(ctx, x, offset: true)
            if let e = code(t.token_xent!(ctx.raw, Int32(r), Int32(c), bx.pointer, bl.pointer, -1, 0.5, bx.pointer, nil, nil), OPC_OK, "token_xent") { return e }
            let want = TransformerReference.tokenXent(logits: doubles(x), labels: Array(labels[1...]), rows: r, classes: c, ignoreIndex: -1, gradScale: 0.5)
            return compare(try ctx.download(bx), want.dlogits) { i in 1e-5 * abs(want.dlogits[i]) + 1e-7 }
        }
        check("token_xent logits of +-1000 and a 90-wide spread") {
            let (r, c) = (4, 9)
            var x = random(r * c, scale: 45)
            for j in 0..<c { x[j] = j % 2 == 0 ? 1000 : -1000; x[c + j] = -1000 + Float(j) }
            let labels: [Int64] = [1, 8, 0, 4]
            let bx = try device(ctx, x, offset: true), bl = try ctx.uploadLabels(labels)
            let (loss, count) = try ctx.tokenCrossEntropy(rows: r, classes: c, logits: bx, labels: bl, gradScale: 1, dlogits: bx)
            let want = TransformerReference.tokenXent(logits: doubles(x), labels: labels, rows: r, classes: c, ignoreIndex: -100, gradScale: 1)
            if count != r || abs(loss - want.lossSum) > 1e-5 * max(1, abs(want.lossSum)) { return "loss sum \(loss), want \(want.lossSum)" }
            return compare(try ctx.download(bx), want.dlogits) { i in 1e-5 * abs(want.dlogits[i]) + 1e-7 }
        }
        check("token_xent every row ignored: zero loss, count 0, zero dlogits") {
            let bx = try device(ctx, random(12), offset: false), bl = try ctx.uploadLabels([-100, -100, -100])
            let (loss, count) = try ctx.tokenCrossEntropy(rows: 3, classes: 4, logits: bx, labels: bl, gradScale: 1, dlogits: bx)
            if loss != 0 || count != 0 { return "loss \(loss), count \(count)" }
            return try ctx.download(bx) == [Float](repeating: 0, count: 12) ? nil : "dlogits not zeroed"
        }
        check("token_xent 0 rows") {
            var loss = 5.0, count: Int64 = 5
            if let e = code(t.token_xent!(ctx.raw, 0, 3, nil, nil, -100, 1, nil, &loss, &count), OPC_OK, "token_xent(0 rows)") { return e }
            return loss == 0 && count == 0 ? nil : "loss \(loss), count \(count) for no rows"
        }
    }

    // MARK: Bad ids, positions, labels, shapes

    func transformerErrors(_ ctx: KernelContext) {
        let raw = ctx.raw, t = self.t
        /// The call must return OPC_E_INVALID with last_error set and leave `outputs` as they were.
        func refuses(_ name: String, _ outputs: [DeviceBuffer], _ call: () -> Int32) {
            check("\(name): OPC_E_INVALID, nothing written") {
                let before = try outputs.map { try ctx.downloadBytes($0) }
                if let e = code(call(), OPC_E_INVALID, name) { return e }
                if ctx.lastError.isEmpty { return "last_error is empty" }
                return try outputs.map({ try ctx.downloadBytes($0) }) == before ? nil : "an output was written"
            }
        }
        guard let buf = try? device(ctx, random(4096), offset: false), let out = try? device(ctx, random(4096), offset: false),
              let out2 = try? device(ctx, random(4096), offset: false) else {
            record("transformer error returns", "cannot allocate")
            return
        }
        let p = buf.pointer, o = out.pointer
        for bad in [Int32(10), -1] {
            guard let ids = try? ctx.uploadInt32([1, 2, bad, 3]) else { continue }
            refuses("embedding_forward id \(bad) of vocab 10", [out]) { t.embedding_forward!(raw, 4, 10, 8, p, ids.pointer, o) }
            refuses("embedding_backward id \(bad) of vocab 10", [out]) { t.embedding_backward!(raw, 4, 10, 8, ids.pointer, p, o) }
            refuses("rope position \(bad) of 10 table rows", [out]) { t.rope!(raw, 4, 2, 4, o, ids.pointer, 10, p, p, 0) }
        }
        if let pos = try? ctx.uploadInt32([0, 1]) {
            refuses("rope odd head_dim 5", [out]) { t.rope!(raw, 2, 1, 5, o, pos.pointer, 10, p, p, 0) }
            refuses("rope rows=-1", [out]) { t.rope!(raw, -1, 1, 4, o, pos.pointer, 10, p, p, 0) }
        }
        for bad in [Int64(4), -1, -101] {
            guard let labels = try? ctx.uploadLabels([1, bad, 2]) else { continue }
            check("token_xent label \(bad) of 4 classes: OPC_E_INVALID, nothing written") {
                let before = try ctx.downloadBytes(out), logits = try ctx.downloadBytes(buf)
                var loss = 42.0, count: Int64 = 42
                if let e = code(t.token_xent!(raw, 3, 4, p, labels.pointer, -100, 1, o, &loss, &count), OPC_E_INVALID, "token_xent") { return e }
                if try ctx.downloadBytes(out) != before { return "dlogits written" }
                if try ctx.downloadBytes(buf) != logits { return "logits written" }
                return loss != 42 || count != 42 ? "loss/count written" : nil
            }
        }
        refuses("attention_forward heads 4, kv_heads 3", [out, out2]) { t.attention_forward!(raw, 1, 4, 4, 3, 2, 1, p, p, p, o, out2.pointer) }
        refuses("attention_forward heads 2, kv_heads 0", [out, out2]) { t.attention_forward!(raw, 1, 4, 2, 0, 2, 1, p, p, p, o, out2.pointer) }
        refuses("attention_backward heads 4, kv_heads 3", [out, out2]) {
            t.attention_backward!(raw, 1, 4, 4, 3, 2, 1, p, p, p, p, p, o, out2.pointer, out2.pointer)
        }
        refuses("attention_forward seq=-1", [out, out2]) { t.attention_forward!(raw, 1, -1, 2, 1, 2, 1, p, p, p, o, out2.pointer) }
        refuses("rmsnorm_forward dim=-1", [out]) { t.rmsnorm_forward!(raw, 2, -1, 1e-5, p, p, o, nil) }
        refuses("rmsnorm_backward rows=-1", [out]) { t.rmsnorm_backward!(raw, -1, 4, p, p, p, p, o, nil) }
        refuses("embedding_forward tokens=-1", [out]) { t.embedding_forward!(raw, -1, 10, 4, p, p, o) }
        refuses("token_xent 2 rows, 0 classes", [out]) { t.token_xent!(raw, 2, 0, p, p, -100, 1, o, nil, nil) }
        check("transformer kernels: NULL pointers with work to do: OPC_E_INVALID") {
            let calls: [(String, () -> Int32)] = [
                ("embedding_forward ids", { t.embedding_forward!(raw, 2, 4, 2, p, nil, o) }),
                ("embedding_backward dtable", { t.embedding_backward!(raw, 2, 4, 2, p, p, nil) }),
                ("rmsnorm_forward w", { t.rmsnorm_forward!(raw, 2, 2, 1e-5, p, nil, o, nil) }),
                ("rmsnorm_backward rstd", { t.rmsnorm_backward!(raw, 2, 2, p, p, nil, p, o, nil) }),
                ("rope cos", { t.rope!(raw, 2, 1, 2, o, p, 1, nil, p, 0) }),
                ("attention_forward probs", { t.attention_forward!(raw, 1, 2, 1, 1, 2, 1, p, p, p, nil, o) }),
                ("attention_backward dk", { t.attention_backward!(raw, 1, 2, 1, 1, 2, 1, p, p, p, p, p, o, nil, o) }),
                ("silu_gate_forward u", { t.silu_gate_forward!(raw, 4, p, nil, o) }),
                ("silu_gate_backward du", { t.silu_gate_backward!(raw, 4, p, p, p, o, nil) }),
                ("token_xent labels", { t.token_xent!(raw, 2, 2, p, nil, -100, 1, o, nil, nil) }),
            ]
            for (what, call) in calls { if let e = code(call(), OPC_E_INVALID, what) { return e } }
            return nil
        }
        check("transformer kernels: zero sizes accept NULL") {
            let calls: [(String, () -> Int32)] = [
                ("embedding_forward(0 tokens)", { t.embedding_forward!(raw, 0, 4, 2, nil, nil, nil) }),
                ("embedding_backward(dim 0)", { t.embedding_backward!(raw, 3, 4, 0, nil, nil, nil) }),
                ("rmsnorm_forward(0 rows)", { t.rmsnorm_forward!(raw, 0, 4, 1e-5, nil, nil, nil, nil) }),
                ("rmsnorm_backward(0 rows)", { t.rmsnorm_backward!(raw, 0, 4, nil, nil, nil, nil, nil, nil) }),
                ("rope(0 rows)", { t.rope!(raw, 0, 2, 4, nil, nil, 0, nil, nil, 0) }),
                ("attention_forward(batch 0)", { t.attention_forward!(raw, 0, 4, 2, 1, 4, 1, nil, nil, nil, nil, nil) }),
                ("attention_backward(seq 0)", { t.attention_backward!(raw, 1, 0, 2, 1, 4, 1, nil, nil, nil, nil, nil, nil, nil, nil) }),
                ("silu_gate_forward(0)", { t.silu_gate_forward!(raw, 0, nil, nil, nil) }),
                ("silu_gate_backward(0)", { t.silu_gate_backward!(raw, 0, nil, nil, nil, nil, nil) }),
            ]
            for (what, call) in calls { if let e = code(call(), OPC_OK, what) { return e } }
            return nil
        }
    }

    // MARK: Determinism

    func transformerDeterminism(_ ctx: KernelContext) {
        func twice(_ name: String, _ run: () throws -> [UInt8]) {
            check("deterministic: \(name)") { try run() == run() ? nil : "two identical calls gave different bytes" }
        }
        let s = TransformerReference.AttentionShape(batch: 2, seq: 96, heads: 4, kvHeads: 2, headDim: 32)
        let q = random(s.qCount), k = random(s.kvCount), v = random(s.kvCount), dout = random(s.qCount)
        twice("attention forward and backward, seq 96, heads 4/kv 2") {
            let bq = try device(ctx, q, offset: false), bk = try device(ctx, k, offset: false), bv = try device(ctx, v, offset: false)
            let bp = try ctx.alloc(count: s.probsCount), bo = try ctx.alloc(count: s.qCount), bd = try device(ctx, dout, offset: false)
            let dq = try ctx.alloc(count: s.qCount), dk = try ctx.alloc(count: s.kvCount), dv = try ctx.alloc(count: s.kvCount)
            try ctx.attentionForward(batch: 2, seq: 96, heads: 4, kvHeads: 2, headDim: 32, scale: 0.17, q: bq, k: bk, v: bv, probs: bp, out: bo)
            try ctx.attentionBackward(batch: 2, seq: 96, heads: 4, kvHeads: 2, headDim: 32, scale: 0.17, q: bq, k: bk, v: bv,
                                      probs: bp, dout: bd, dq: dq, dk: dk, dv: dv)
            return try [bp, bo, dq, dk, dv].flatMap { try ctx.downloadBytes($0) }
        }
        let x = random(64 * 1000, scale: 4), labels = (0..<64).map { _ in Int64(rng.int(1000)) }
        twice("token_xent and rmsnorm 64x1000") {
            let bx = try device(ctx, x, offset: false), bl = try ctx.uploadLabels(labels), out = try ctx.alloc(count: x.count)
            let (loss, _) = try ctx.tokenCrossEntropy(rows: 64, classes: 1000, logits: bx, labels: bl, gradScale: 1, dlogits: out)
            let w = try device(ctx, Array(x.prefix(1000)), offset: false), r = try ctx.alloc(count: 64), dw = try ctx.alloc(count: 1000)
            try ctx.rmsNormForward(rows: 64, dim: 1000, eps: 1e-6, x: bx, weight: w, y: bx, rstd: r)
            try ctx.rmsNormBackward(rows: 64, dim: 1000, x: bx, weight: w, rstd: r, dy: out, dx: out, dweight: dw)
            return try [out, bx, r, dw].flatMap { try ctx.downloadBytes($0) } + withUnsafeBytes(of: loss) { [UInt8]($0) }
        }
    }
}
