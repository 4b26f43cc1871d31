import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI

/// Typed wrappers of the ABI v3 transformer kernels (embedding, RMSNorm, RoPE, causal GQA
/// attention, SiLU gate, token cross-entropy). As the other wrappers, sizes are checked
/// against the buffers on the host first (PluginError.invalidArgument naming the kernel);
/// a plugin serving ABI v1 or v2 throws PluginError.transformerKernelsMissing (exit 69).
///
/// Token ids and positions are int32 buffers (uploadInt32), labels int64 (uploadLabels).
/// A DeviceBuffer records only its element size, so an f32 buffer passed where int32 ids
/// are expected is not caught here (both have 4-byte elements); ids and positions out of
/// range still are, by the plugin, before anything is written.
extension KernelContext {
    /// Whether the plugin serves the transformer kernels (ABI version 3 or later).
    public var supportsTransformerKernels: Bool { plugin.abiVersion >= 3 && fns.token_xent != nil }

    // MARK: - Upload helpers

    /// Uploads int32 values (token ids, positions) into a new buffer of 4-byte elements.
    public func uploadInt32(_ values: [Int32]) throws -> DeviceBuffer {
        guard values.count <= Int.max / 4 else {
            throw PluginError.invalidArgument(function: "alloc", reason: "bad element count \(values.count)")
        }
        let buf = try allocate(bytes: values.count * 4, elementSize: 4, function: "alloc")
        try values.withUnsafeBytes { try upload(bytes: $0, to: buf) }
        return buf
    }

    /// Copies int32 values into the start of `dst` (a buffer of 4-byte elements).
    public func uploadInt32(_ values: [Int32], to dst: DeviceBuffer) throws {
        try requireElements("upload", dst, "destination", size: 4, atLeast: values.count, kind: "int32")
        try values.withUnsafeBytes { try upload(bytes: $0, to: dst) }
    }

    /// Copies int64 labels into the start of `dst` (a buffer from uploadLabels).
    public func uploadLabels(_ labels: [Int64], to dst: DeviceBuffer) throws {
        try requireElements("upload", dst, "destination", size: 8, atLeast: labels.count, kind: "int64")
        try labels.withUnsafeBytes { try upload(bytes: $0, to: dst) }
    }

    // MARK: - Embedding

    /// out[t, :] = table[ids[t], :] for t < tokens; table is [vocab, dim], ids int32.
    public func embeddingForward(tokens: Int, vocab: Int, dim: Int, table: DeviceBuffer, ids: DeviceBuffer,
                                 out: DeviceBuffer) throws {
        let f = "embedding_forward"
        let kernel = try transformerKernel(f, fns.embedding_forward)
        let (t32, v32, d32) = (try int32(f, "tokens", tokens), try int32(f, "vocab", vocab), try int32(f, "dim", dim))
        try requireF32(f, table, "table", atLeast: try product(f, vocab, dim))
        try requireElements(f, ids, "ids", size: 4, atLeast: tokens, kind: "int32")
        try requireF32(f, out, "out", atLeast: try product(f, tokens, dim))
        try check(f, kernel(raw, t32, v32, d32, table.pointer, ids.pointer, out.pointer))
    }

    /// dtable[ids[t], :] += dout[t, :] in token order (dtable is not cleared).
    public func embeddingBackward(tokens: Int, vocab: Int, dim: Int, ids: DeviceBuffer, dout: DeviceBuffer,
                                  dtable: DeviceBuffer) throws {
        let f = "embedding_backward"
        let kernel = try transformerKernel(f, fns.embedding_backward)
        let (t32, v32, d32) = (try int32(f, "tokens", tokens), try int32(f, "vocab", vocab), try int32(f, "dim", dim))
        try requireElements(f, ids, "ids", size: 4, atLeast: tokens, kind: "int32")
        try requireF32(f, dout, "dout", atLeast: try product(f, tokens, dim))
        try requireF32(f, dtable, "dtable", atLeast: try product(f, vocab, dim))
        try check(f, kernel(raw, t32, v32, d32, ids.pointer, dout.pointer, dtable.pointer))
    }

    // MARK: - RMSNorm

    /// y = weight * (x * rstd) per row of x[rows, dim]; rstd[rows] saved when given. y may be x.
    public func rmsNormForward(rows: Int, dim: Int, eps: Float, x: DeviceBuffer, weight: DeviceBuffer,
                               y: DeviceBuffer, rstd: DeviceBuffer?) throws {
        let f = "rmsnorm_forward"
        let kernel = try transformerKernel(f, fns.rmsnorm_forward)
        let (r32, d32) = (try int32(f, "rows", rows), try int32(f, "dim", dim))
        let n = try product(f, rows, dim)
        try requireF32(f, x, "x", atLeast: n)
        try requireF32(f, weight, "weight", atLeast: dim)
        try requireF32(f, y, "y", atLeast: n)
        if let rstd { try requireF32(f, rstd, "rstd", atLeast: rows) }
        try check(f, kernel(raw, r32, d32, eps, x.pointer, weight.pointer, y.pointer, rstd?.pointer))
    }

    /// dx (overwritten; may be dy) and, when given, dweight += the weight gradient, from the
    /// forward's x and rstd.
    public func rmsNormBackward(rows: Int, dim: Int, x: DeviceBuffer, weight: DeviceBuffer, rstd: DeviceBuffer,
                                dy: DeviceBuffer, dx: DeviceBuffer, dweight: DeviceBuffer?) throws {
        let f = "rmsnorm_backward"
        let kernel = try transformerKernel(f, fns.rmsnorm_backward)
        let (r32, d32) = (try int32(f, "rows", rows), try int32(f, "dim", dim))
        let n = try product(f, rows, dim)
        try requireF32(f, x, "x", atLeast: n)
        try requireF32(f, weight, "weight", atLeast: dim)
        try requireF32(f, rstd, "rstd", atLeast: rows)
        try requireF32(f, dy, "dy", atLeast: n)
        try requireF32(f, dx, "dx", atLeast: n)
        if let dweight { try requireF32(f, dweight, "dweight", atLeast: dim) }
        try check(f, kernel(raw, r32, d32, x.pointer, weight.pointer, rstd.pointer, dy.pointer, dx.pointer,
                            dweight?.pointer))
    }

    // MARK: - RoPE

    /// Rotary embedding in place on x[rows, heads, headDim] (rotate_half layout), row r at
    /// position positions[r] (int32) of the cos/sin tables [tableRows, headDim / 2];
    /// `inverse` applies the transpose (the backward pass).
    public func rope(rows: Int, heads: Int, headDim: Int, x: DeviceBuffer, positions: DeviceBuffer, tableRows: Int,
                     cos: DeviceBuffer, sin: DeviceBuffer, inverse: Bool) throws {
        let f = "rope"
        let kernel = try transformerKernel(f, fns.rope)
        let (r32, h32, d32) = (try int32(f, "rows", rows), try int32(f, "heads", heads), try int32(f, "head_dim", headDim))
        let tr32 = try int32(f, "table_rows", tableRows)
        guard headDim % 2 == 0 else {
            throw PluginError.invalidArgument(function: f, reason: "head_dim \(headDim) is odd (rotate_half needs an even head_dim)")
        }
        try requireF32(f, x, "x", atLeast: try product(f, rows, heads, headDim))
        try requireElements(f, positions, "positions", size: 4, atLeast: rows, kind: "int32")
        let table = try product(f, tableRows, headDim / 2)
        try requireF32(f, cos, "cos", atLeast: table)
        try requireF32(f, sin, "sin", atLeast: table)
        try check(f, kernel(raw, r32, h32, d32, x.pointer, positions.pointer, tr32, cos.pointer, sin.pointer,
                            inverse ? 1 : 0))
    }

    // MARK: - Attention

    /// Causal grouped-query attention: q, out [batch*seq, heads*headDim]; k, v
    /// [batch*seq, kvHeads*headDim]; probs [batch, heads, seq, seq] (written, for the backward).
    public func attentionForward(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int, scale: Float,
                                 q: DeviceBuffer, k: DeviceBuffer, v: DeviceBuffer, probs: DeviceBuffer,
                                 out: DeviceBuffer) throws {
        let f = "attention_forward"
        let kernel = try transformerKernel(f, fns.attention_forward)
        let s = try attentionShape(f, batch: batch, seq: seq, heads: heads, kvHeads: kvHeads, headDim: headDim)
        try requireF32(f, q, "q", atLeast: s.qCount)
        try requireF32(f, k, "k", atLeast: s.kvCount)
        try requireF32(f, v, "v", atLeast: s.kvCount)
        try requireF32(f, probs, "probs", atLeast: s.probsCount)
        try requireF32(f, out, "out", atLeast: s.qCount)
        try check(f, kernel(raw, s.b, s.t, s.h, s.kvh, s.d, scale, q.pointer, k.pointer, v.pointer, probs.pointer,
                            out.pointer))
    }

    /// Gradients of attentionForward from its probs: dq, dk, dv overwritten (dk and dv sum
    /// over the query heads sharing a kv head).
    public func attentionBackward(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int, scale: Float,
                                  q: DeviceBuffer, k: DeviceBuffer, v: DeviceBuffer, probs: DeviceBuffer,
                                  dout: DeviceBuffer, dq: DeviceBuffer, dk: DeviceBuffer, dv: DeviceBuffer) throws {
        let f = "attention_backward"
        let kernel = try transformerKernel(f, fns.attention_backward)
        let s = try attentionShape(f, batch: batch, seq: seq, heads: heads, kvHeads: kvHeads, headDim: headDim)
        try requireF32(f, q, "q", atLeast: s.qCount)
        try requireF32(f, k, "k", atLeast: s.kvCount)
        try requireF32(f, v, "v", atLeast: s.kvCount)
        try requireF32(f, probs, "probs", atLeast: s.probsCount)
        try requireF32(f, dout, "dout", atLeast: s.qCount)
        try requireF32(f, dq, "dq", atLeast: s.qCount)
        try requireF32(f, dk, "dk", atLeast: s.kvCount)
        try requireF32(f, dv, "dv", atLeast: s.kvCount)
        try check(f, kernel(raw, s.b, s.t, s.h, s.kvh, s.d, scale, q.pointer, k.pointer, v.pointer, probs.pointer,
                            dout.pointer, dq.pointer, dk.pointer, dv.pointer))
    }

    private struct AttentionShape {
        var b, t, h, kvh, d: Int32
        var qCount, kvCount, probsCount: Int
    }

    private func attentionShape(_ f: String, batch: Int, seq: Int, heads: Int, kvHeads: Int,
                                headDim: Int) throws -> AttentionShape {
        let b = try int32(f, "batch", batch), t = try int32(f, "seq", seq), h = try int32(f, "heads", heads)
        let kvh = try int32(f, "kv_heads", kvHeads), d = try int32(f, "head_dim", headDim)
        if heads > 0 {
            guard kvHeads >= 1, heads % kvHeads == 0 else {
                throw PluginError.invalidArgument(function: f, reason: "heads \(heads) is not a multiple of kv_heads \(kvHeads)")
            }
        }
        return AttentionShape(b: b, t: t, h: h, kvh: kvh, d: d,
                              qCount: try product(f, batch, seq, heads, headDim),
                              kvCount: try product(f, batch, seq, kvHeads, headDim),
                              probsCount: try product(f, batch, heads, seq, seq))
    }

    // MARK: - SiLU gate

    /// h = silu(g) * u over the first `count` elements; h may be g or u.
    public func siluGateForward(count: Int, g: DeviceBuffer, u: DeviceBuffer, h: DeviceBuffer) throws {
        let f = "silu_gate_forward"
        let kernel = try transformerKernel(f, fns.silu_gate_forward)
        guard count >= 0 else { throw PluginError.invalidArgument(function: f, reason: "negative count \(count)") }
        for (b, role) in [(g, "g"), (u, "u"), (h, "h")] { try requireF32(f, b, role, atLeast: count) }
        try check(f, kernel(raw, count, g.pointer, u.pointer, h.pointer))
    }

    /// dg = dh * u * silu'(g), du = dh * silu(g); dg may be g or dh, du may be u.
    public func siluGateBackward(count: Int, g: DeviceBuffer, u: DeviceBuffer, dh: DeviceBuffer, dg: DeviceBuffer,
                                 du: DeviceBuffer) throws {
        let f = "silu_gate_backward"
        let kernel = try transformerKernel(f, fns.silu_gate_backward)
        guard count >= 0 else { throw PluginError.invalidArgument(function: f, reason: "negative count \(count)") }
        for (b, role) in [(g, "g"), (u, "u"), (dh, "dh"), (dg, "dg"), (du, "du")] {
            try requireF32(f, b, role, atLeast: count)
        }
        try check(f, kernel(raw, count, g.pointer, u.pointer, dh.pointer, dg.pointer, du.pointer))
    }

    // MARK: - Token cross-entropy

    /// Cross-entropy of logits[rows, classes] against int64 labels, rows labelled
    /// `ignoreIndex` skipped (zero dlogits rows). dlogits = (softmax - onehot) * gradScale
    /// (dlogits may be logits). Returns the summed loss over counted rows and their count.
    public func tokenCrossEntropy(rows: Int, classes: Int, logits: DeviceBuffer, labels: DeviceBuffer,
                                  ignoreIndex: Int64 = -100, gradScale: Float,
                                  dlogits: DeviceBuffer) throws -> (lossSum: Double, count: Int) {
        let f = "token_xent"
        let kernel = try transformerKernel(f, fns.token_xent)
        let (r32, c32) = (try int32(f, "rows", rows), try int32(f, "classes", classes))
        let n = try product(f, rows, classes)
        try requireF32(f, logits, "logits", atLeast: n)
        try requireF32(f, dlogits, "dlogits", atLeast: n)
        try requireElements(f, labels, "labels", size: 8, atLeast: rows, kind: "int64 (uploadLabels)")
        var loss = 0.0
        var count: Int64 = 0
        try check(f, kernel(raw, r32, c32, logits.pointer, labels.pointer, ignoreIndex, gradScale, dlogits.pointer,
                            &loss, &count))
        return (loss, Int(count))
    }

    // MARK: - Checks

    /// The v3 function, or transformerKernelsMissing for an older plugin.
    private func transformerKernel<F>(_ f: String, _ kernel: F?) throws -> F {
        guard let kernel else {
            throw PluginError.transformerKernelsMissing(plugin: plugin.name, abiVersion: plugin.abiVersion)
        }
        return kernel
    }

    /// A buffer of this plugin with `size`-byte elements and at least `atLeast` of them.
    private func requireElements(_ f: String, _ b: DeviceBuffer, _ role: String, size: Int, atLeast n: Int,
                                 kind: String) throws {
        try requireSame(b)
        guard b.elementSize == size else {
            throw PluginError.invalidArgument(function: f, reason: "\(role) must be \(kind), not \(b.elementSize)-byte elements")
        }
        try requireCount(f, b, atLeast: n, role)
    }

    /// The product of non-negative sizes, refusing overflow.
    private func product(_ f: String, _ sizes: Int...) throws -> Int {
        var n = 1
        for s in sizes {
            guard s >= 0 else { throw PluginError.invalidArgument(function: f, reason: "negative size \(s)") }
            let (p, overflow) = n.multipliedReportingOverflow(by: s)
            guard !overflow else {
                throw PluginError.invalidArgument(function: f, reason: "sizes \(sizes.map(String.init).joined(separator: "x")) overflow")
            }
            n = p
        }
        return n
    }
}
