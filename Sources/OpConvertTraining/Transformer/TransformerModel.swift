import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// A frozen LLaMA-family decoder on the device (f32), with adapters on some projections:
/// forward to the token loss and backward to the adapters' gradients, over the plugin's
/// v3 transformer kernels. Activations are [tokens, features] with tokens = rows * seq.
package final class TransformerModel {
    struct Projection {
        let weight: DeviceBuffer
        let bias: DeviceBuffer?
        let outF: Int, inF: Int
        var adapter: ProjectionAdapter?
    }

    struct Layer {
        let inputNorm: DeviceBuffer, postNorm: DeviceBuffer
        var q, k, v, o, gate, up, down: Projection
    }

    /// What one layer's forward leaves for its backward.
    final class Activations {
        let h1, rstd1, q, k, v, probs, attn, xMid, h2, rstd2, g, u, act: DeviceBuffer
        init(_ ctx: KernelContext, _ c: TransformerConfig, rows: Int, seq: Int) throws {
            let n = rows * seq
            h1 = try ctx.alloc(count: n * c.hiddenSize)
            rstd1 = try ctx.alloc(count: n)
            q = try ctx.alloc(count: n * c.qDim)
            k = try ctx.alloc(count: n * c.kvDim)
            v = try ctx.alloc(count: n * c.kvDim)
            probs = try ctx.alloc(count: rows * c.headCount * seq * seq)
            attn = try ctx.alloc(count: n * c.qDim)
            xMid = try ctx.alloc(count: n * c.hiddenSize)
            h2 = try ctx.alloc(count: n * c.hiddenSize)
            rstd2 = try ctx.alloc(count: n)
            g = try ctx.alloc(count: n * c.intermediateSize)
            u = try ctx.alloc(count: n * c.intermediateSize)
            act = try ctx.alloc(count: n * c.intermediateSize)
        }
    }

    let ctx: KernelContext
    let config: TransformerConfig
    let maxRows: Int, maxSeq: Int
    let checkpointActivations: Bool
    var layers: [Layer]
    let embedding: DeviceBuffer, finalNorm: DeviceBuffer, outputProjection: DeviceBuffer
    let cosTable: DeviceBuffer, sinTable: DeviceBuffer
    // Work buffers, sized for maxRows x maxSeq tokens.
    let ids: DeviceBuffer, positions: DeviceBuffer, labels: DeviceBuffer
    let residual: [DeviceBuffer]          // the stream entering each layer, and the last one's output
    let activations: [Activations]        // one per layer, or one shared when checkpointing
    package let hFinal: DeviceBuffer, rstdFinal: DeviceBuffer, logits: DeviceBuffer
    let dx, dtmp, dh, dact, dg, du, dattn, dq, dk, dv: DeviceBuffer
    private var rows = 0, seq = 0
    var tokens: Int { rows * seq }

    /// Bytes of activation memory kept between forward and backward (f32).
    static func activationBytes(_ c: TransformerConfig, rows: Int, seq: Int, checkpoint: Bool) -> Int {
        let n = rows * seq
        let perLayer = n * (4 * c.hiddenSize + 2 * c.qDim + 2 * c.kvDim + 3 * c.intermediateSize + 2) + rows * c.headCount * seq * seq
        let stream = (c.layerCount + 1) * n * c.hiddenSize
        return 4 * (stream + (checkpoint ? 1 : c.layerCount) * perLayer + n * (c.vocabSize + c.hiddenSize + 1))
    }

    init(_ ctx: KernelContext, weights: TransformerWeights, maxRows: Int, maxSeq: Int, checkpointActivations: Bool) throws {
        self.ctx = ctx
        let c = weights.config
        config = c
        self.maxRows = maxRows
        self.maxSeq = maxSeq
        self.checkpointActivations = checkpointActivations
        func upload(_ name: String) throws -> DeviceBuffer {
            let values = try weights.floats(name)
            let b = try ctx.alloc(count: values.count)
            try ctx.upload(values, to: b)
            return b
        }
        func projection(_ w: TransformerLayerTensor, _ bias: TransformerLayerTensor, layer: Int) throws -> Projection {
            let shape = w.shape(c)!
            return Projection(weight: try upload(w.name(layer: layer)),
                              bias: bias.shape(c) == nil ? nil : try upload(bias.name(layer: layer)),
                              outF: shape[0], inF: shape[1], adapter: nil)
        }
        layers = try (0..<c.layerCount).map { l in
            Layer(inputNorm: try upload(TransformerLayerTensor.inputNorm.name(layer: l)),
                  postNorm: try upload(TransformerLayerTensor.postAttentionNorm.name(layer: l)),
                  q: try projection(.q, .qBias, layer: l), k: try projection(.k, .kBias, layer: l),
                  v: try projection(.v, .vBias, layer: l), o: try projection(.o, .oBias, layer: l),
                  gate: try projection(.gate, .gateBias, layer: l), up: try projection(.up, .upBias, layer: l),
                  down: try projection(.down, .downBias, layer: l))
        }
        embedding = try upload(TransformerWeights.embeddingName)
        finalNorm = try upload(TransformerWeights.finalNormName)
        outputProjection = c.tieWordEmbeddings ? embedding : try upload(TransformerWeights.lmHeadName)
        // RoPE tables as transformers makes them: freqs = pos * inv_freq in f32, cos/sin in f32.
        let inv = c.ropeInverseFrequencies(), half = c.headDim / 2
        var cosValues = [Float](repeating: 0, count: maxSeq * half), sinValues = cosValues
        for p in 0..<maxSeq {
            for i in 0..<half {
                let f = Float(p) * inv[i]
                cosValues[p * half + i] = Foundation.cos(f)
                sinValues[p * half + i] = Foundation.sin(f)
            }
        }
        cosTable = try ctx.alloc(count: cosValues.count)
        try ctx.upload(cosValues, to: cosTable)
        sinTable = try ctx.alloc(count: sinValues.count)
        try ctx.upload(sinValues, to: sinTable)
        let n = maxRows * maxSeq
        ids = try ctx.uploadInt32([Int32](repeating: 0, count: n))
        positions = try ctx.uploadInt32([Int32](repeating: 0, count: n))
        labels = try ctx.uploadLabels([Int64](repeating: -100, count: n))
        residual = try (0...c.layerCount).map { _ in try ctx.alloc(count: n * c.hiddenSize) }
        activations = try (0..<(checkpointActivations ? 1 : c.layerCount)).map { _ in
            try Activations(ctx, c, rows: maxRows, seq: maxSeq)
        }
        hFinal = try ctx.alloc(count: n * c.hiddenSize)
        rstdFinal = try ctx.alloc(count: n)
        logits = try ctx.alloc(count: n * c.vocabSize)
        let wide = max(c.hiddenSize, c.qDim, c.intermediateSize)
        dx = try ctx.alloc(count: n * c.hiddenSize)
        dtmp = try ctx.alloc(count: n * c.hiddenSize)
        dh = try ctx.alloc(count: n * wide)
        dact = try ctx.alloc(count: n * c.intermediateSize)
        dg = try ctx.alloc(count: n * c.intermediateSize)
        du = try ctx.alloc(count: n * c.intermediateSize)
        dattn = try ctx.alloc(count: n * c.qDim)
        dq = try ctx.alloc(count: n * c.qDim)
        dk = try ctx.alloc(count: n * c.kvDim)
        dv = try ctx.alloc(count: n * c.kvDim)
    }

    var adapters: [ProjectionAdapter] {
        layers.flatMap { l in [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].compactMap(\.adapter) }
    }

    func projection(layer l: Int, module: String) -> Projection {
        switch module {
        case "q_proj": return layers[l].q
        case "k_proj": return layers[l].k
        case "v_proj": return layers[l].v
        case "o_proj": return layers[l].o
        case "gate_proj": return layers[l].gate
        case "up_proj": return layers[l].up
        default: return layers[l].down
        }
    }

    func setAdapter(_ a: ProjectionAdapter) {
        let l = a.layer
        switch a.module {
        case "q_proj": layers[l].q.adapter = a
        case "k_proj": layers[l].k.adapter = a
        case "v_proj": layers[l].v.adapter = a
        case "o_proj": layers[l].o.adapter = a
        case "gate_proj": layers[l].gate.adapter = a
        case "up_proj": layers[l].up.adapter = a
        default: layers[l].down.adapter = a
        }
    }

    /// Shapes of a projection by PEFT name: (out, in).
    static func shape(of module: String, _ c: TransformerConfig) -> (out: Int, in: Int) {
        switch module {
        case "q_proj": return (c.qDim, c.hiddenSize)
        case "k_proj", "v_proj": return (c.kvDim, c.hiddenSize)
        case "o_proj": return (c.hiddenSize, c.qDim)
        case "gate_proj", "up_proj": return (c.intermediateSize, c.hiddenSize)
        default: return (c.hiddenSize, c.intermediateSize)
        }
    }

    /// Sets the batch: `inputIDs` [rows, seq] row-major.
    package func setBatch(inputIDs: [Int32], rows: Int, seq: Int) throws {
        precondition(rows <= maxRows && seq <= maxSeq && inputIDs.count == rows * seq)
        self.rows = rows
        self.seq = seq
        try ctx.uploadInt32(inputIDs, to: ids)
        try ctx.uploadInt32((0..<(rows * seq)).map { Int32($0 % seq) }, to: positions)
    }

    private func acts(_ l: Int) -> Activations { activations[checkpointActivations ? 0 : l] }

    private func linear(_ p: Projection, x: DeviceBuffer, y: DeviceBuffer) throws {
        let n = tokens
        try ctx.gemm(transA: false, transB: true, m: n, n: p.outF, k: p.inF, alpha: 1, a: x, lda: p.inF, b: p.adapter?.forwardWeight ?? p.weight,
                     ldb: p.inF, beta: 0, c: y, ldc: p.outF)
        if let b = p.bias { try ctx.addRowVector(rows: n, cols: p.outF, v: b, x: y) }
        if let a = p.adapter { try a.forward(ctx, x: x, rows: n, y: y) }
    }

    /// dx (= or +=) dy W, and the adapter's gradients.
    private func linearBackward(_ p: Projection, x: DeviceBuffer, dy: DeviceBuffer, dx: DeviceBuffer, accumulate: Bool) throws {
        let n = tokens
        try ctx.gemm(transA: false, transB: false, m: n, n: p.inF, k: p.outF, alpha: 1, a: dy, lda: p.outF, b: p.adapter?.forwardWeight ?? p.weight,
                     ldb: p.inF, beta: accumulate ? 1 : 0, c: dx, ldc: p.inF)
        if let a = p.adapter { try a.backward(ctx, x: x, rows: n, dy: dy, dx: dx) }
    }

    private func layerForward(_ l: Int) throws {
        let c = config, n = tokens, L = layers[l], A = acts(l)
        let x = residual[l], out = residual[l + 1]
        try ctx.rmsNormForward(rows: n, dim: c.hiddenSize, eps: Float(c.rmsNormEps), x: x, weight: L.inputNorm, y: A.h1, rstd: A.rstd1)
        try linear(L.q, x: A.h1, y: A.q)
        try linear(L.k, x: A.h1, y: A.k)
        try linear(L.v, x: A.h1, y: A.v)
        try ctx.rope(rows: n, heads: c.headCount, headDim: c.headDim, x: A.q, positions: positions, tableRows: maxSeq,
                     cos: cosTable, sin: sinTable, inverse: false)
        try ctx.rope(rows: n, heads: c.kvHeadCount, headDim: c.headDim, x: A.k, positions: positions, tableRows: maxSeq,
                     cos: cosTable, sin: sinTable, inverse: false)
        try ctx.attentionForward(batch: rows, seq: seq, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim,
                                 scale: attentionScale, q: A.q, k: A.k, v: A.v, probs: A.probs, out: A.attn)
        try linear(L.o, x: A.attn, y: A.xMid)
        try ctx.axpy(alpha: 1, x: x.slice(offset: 0, count: n * c.hiddenSize), y: A.xMid)
        try ctx.rmsNormForward(rows: n, dim: c.hiddenSize, eps: Float(c.rmsNormEps), x: A.xMid, weight: L.postNorm, y: A.h2, rstd: A.rstd2)
        try linear(L.gate, x: A.h2, y: A.g)
        try linear(L.up, x: A.h2, y: A.u)
        try ctx.siluGateForward(count: n * c.intermediateSize, g: A.g, u: A.u, h: A.act)
        try linear(L.down, x: A.act, y: out)
        try ctx.axpy(alpha: 1, x: A.xMid.slice(offset: 0, count: n * c.hiddenSize), y: out)
    }

    private var attentionScale: Float { 1 / Float(config.headDim).squareRoot() }

    /// Forward to the logits [tokens, vocab] (in `logits`).
    package func forward() throws {
        let c = config, n = tokens
        try ctx.embeddingForward(tokens: n, vocab: c.vocabSize, dim: c.hiddenSize, table: embedding, ids: ids, out: residual[0])
        for l in layers.indices { try layerForward(l) }
        try ctx.rmsNormForward(rows: n, dim: c.hiddenSize, eps: Float(c.rmsNormEps), x: residual[c.layerCount], weight: finalNorm,
                               y: hFinal, rstd: rstdFinal)
        try ctx.gemm(transA: false, transB: true, m: n, n: c.vocabSize, k: c.hiddenSize, alpha: 1, a: hFinal, lda: c.hiddenSize,
                     b: outputProjection, ldb: c.hiddenSize, beta: 0, c: logits, ldc: c.vocabSize)
    }

    /// Backward from dlogits (in `logits`, as token_xent leaves them) to every adapter's
    /// gradients (accumulated). Layers below the lowest adapter are skipped.
    package func backward() throws {
        let c = config, n = tokens, hs = n * c.hiddenSize
        guard let lowest = adapters.map(\.layer).min() else { return }
        try ctx.gemm(transA: false, transB: false, m: n, n: c.hiddenSize, k: c.vocabSize, alpha: 1, a: logits, lda: c.vocabSize,
                     b: outputProjection, ldb: c.hiddenSize, beta: 0, c: dh, ldc: c.hiddenSize)
        try ctx.rmsNormBackward(rows: n, dim: c.hiddenSize, x: residual[c.layerCount], weight: finalNorm, rstd: rstdFinal,
                                dy: dh, dx: dx, dweight: nil)
        for l in stride(from: c.layerCount - 1, through: lowest, by: -1) {
            if checkpointActivations { try layerForward(l) }
            let L = layers[l], A = acts(l)
            // MLP: dx is d(out) here, and d(xMid) after the residual.
            try linearBackward(L.down, x: A.act, dy: dx, dx: dact, accumulate: false)
            try ctx.siluGateBackward(count: n * c.intermediateSize, g: A.g, u: A.u, dh: dact, dg: dg, du: du)
            try linearBackward(L.gate, x: A.h2, dy: dg, dx: dh, accumulate: false)
            try linearBackward(L.up, x: A.h2, dy: du, dx: dh, accumulate: true)
            try ctx.rmsNormBackward(rows: n, dim: c.hiddenSize, x: A.xMid, weight: L.postNorm, rstd: A.rstd2, dy: dh, dx: dtmp, dweight: nil)
            try ctx.axpy(alpha: 1, x: dtmp.slice(offset: 0, count: hs), y: dx)
            // Attention.
            try linearBackward(L.o, x: A.attn, dy: dx, dx: dattn, accumulate: false)
            try ctx.attentionBackward(batch: rows, seq: seq, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim,
                                      scale: attentionScale, q: A.q, k: A.k, v: A.v, probs: A.probs, dout: dattn, dq: dq, dk: dk, dv: dv)
            try ctx.rope(rows: n, heads: c.headCount, headDim: c.headDim, x: dq, positions: positions, tableRows: maxSeq,
                         cos: cosTable, sin: sinTable, inverse: true)
            try ctx.rope(rows: n, heads: c.kvHeadCount, headDim: c.headDim, x: dk, positions: positions, tableRows: maxSeq,
                         cos: cosTable, sin: sinTable, inverse: true)
            try linearBackward(L.q, x: A.h1, dy: dq, dx: dh, accumulate: false)
            try linearBackward(L.k, x: A.h1, dy: dk, dx: dh, accumulate: true)
            try linearBackward(L.v, x: A.h1, dy: dv, dx: dh, accumulate: true)
            guard l > lowest else { break }
            try ctx.rmsNormBackward(rows: n, dim: c.hiddenSize, x: residual[l], weight: L.inputNorm, rstd: A.rstd1, dy: dh, dx: dtmp, dweight: nil)
            try ctx.axpy(alpha: 1, x: dtmp.slice(offset: 0, count: hs), y: dx)
        }
    }
}
