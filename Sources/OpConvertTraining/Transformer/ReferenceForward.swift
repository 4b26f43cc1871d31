import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// A plain-Swift float64 forward pass of a LLaMA-family causal LM, written for clarity, not
/// speed: the oracle that plugin kernels and the trainer are checked against. It follows
/// transformers' eager implementation step by step:
///
///     x = embed[ids]
///     per layer:  h = RMSNorm(x) * w_in;   q, k, v = h Wq^T (+b), h Wk^T (+b), h Wv^T (+b)
///                 q, k = RoPE(q, k) at positions 0..<T (rotate_half layout: pairs (i, i + d/2))
///                 a = softmax(q k^T / sqrt(d), causal, keys with attention_mask 0 excluded) v
///                 x = x + a Wo^T (+b)
///                 h = RMSNorm(x) * w_post;  x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T (+biases)
///     logits = RMSNorm(x) * w_norm  W_out^T       (W_out = lm_head, or the embedding when tied)
///
/// grouped-query attention: query head `j` reads key/value head `j / (heads / kvHeads)`.
/// Optional LoRA factors add `scale * (x A^T) B^T` to the named projections.
public struct ReferenceForward {
    /// A LoRA update of one projection (module path such as "model.layers.0.self_attn.q_proj").
    public struct LoRA: Sendable {
        public var a: [Double]  // [r, in]
        public var b: [Double]  // [out, r]
        public var rank: Int
        public var scale: Double
        public init(a: [Double], b: [Double], rank: Int, scale: Double) {
            self.a = a
            self.b = b
            self.rank = rank
            self.scale = scale
        }
    }

    public let weights: TransformerWeights
    public var adapters: [String: LoRA]
    private var cache: [String: [Double]] = [:]

    public init(weights: TransformerWeights, adapters: [String: LoRA] = [:]) {
        self.weights = weights
        self.adapters = adapters
    }

    private mutating func tensor(_ name: String) throws -> [Double] {
        if let t = cache[name] { return t }
        let t = try weights.floats(name).map(Double.init)
        cache[name] = t
        return t
    }

    /// Logits [rows, sequenceLength, vocab], row-major.
    public mutating func logits(_ data: TokenData) throws -> [Double] {
        let c = weights.config
        let t = data.sequenceLength, hs = c.hiddenSize, v = c.vocabSize
        let inv = c.ropeInverseFrequencies().map(Double.init)
        let embed = try tensor(TransformerWeights.embeddingName)
        let out = try tensor(weights.outputProjectionName)
        let finalNorm = try tensor(TransformerWeights.finalNormName)
        var result = [Double](repeating: 0, count: data.rows * t * v)
        for r in 0..<data.rows {
            let mask = Array(data.attentionMask[(r * t)..<((r + 1) * t)])
            var x = [Double](repeating: 0, count: t * hs)
            for p in 0..<t {
                let id = Int(data.inputIDs[r * t + p])
                for i in 0..<hs { x[p * hs + i] = embed[id * hs + i] }
            }
            for l in 0..<c.layerCount {
                let h = rmsNorm(x, try tensor(TransformerLayerTensor.inputNorm.name(layer: l)), rows: t, width: hs, eps: c.rmsNormEps)
                var q = try project(h, rows: t, .q, .qBias, layer: l, module: "self_attn.q_proj")
                var k = try project(h, rows: t, .k, .kBias, layer: l, module: "self_attn.k_proj")
                let val = try project(h, rows: t, .v, .vBias, layer: l, module: "self_attn.v_proj")
                rope(&q, rows: t, heads: c.headCount, headDim: c.headDim, inv: inv)
                rope(&k, rows: t, heads: c.kvHeadCount, headDim: c.headDim, inv: inv)
                let a = attention(q: q, k: k, v: val, rows: t, mask: mask)
                let o = try project(a, rows: t, .o, .oBias, layer: l, module: "self_attn.o_proj")
                for i in x.indices { x[i] += o[i] }
                let h2 = rmsNorm(x, try tensor(TransformerLayerTensor.postAttentionNorm.name(layer: l)), rows: t, width: hs, eps: c.rmsNormEps)
                let g = try project(h2, rows: t, .gate, .gateBias, layer: l, module: "mlp.gate_proj")
                let u = try project(h2, rows: t, .up, .upBias, layer: l, module: "mlp.up_proj")
                let act = zip(g, u).map { gv, uv in gv / (1 + Foundation.exp(-gv)) * uv }
                let d = try project(act, rows: t, .down, .downBias, layer: l, module: "mlp.down_proj")
                for i in x.indices { x[i] += d[i] }
            }
            let hFinal = rmsNorm(x, finalNorm, rows: t, width: hs, eps: c.rmsNormEps)
            let lg = matmulTransposed(hFinal, rows: t, inner: hs, out, outWidth: v)
            result.replaceSubrange((r * t * v)..<((r + 1) * t * v), with: lg)
        }
        return result
    }

    /// x W^T (+ bias) (+ scale (x A^T) B^T), x: [rows, in], W: [out, in].
    private mutating func project(_ x: [Double], rows: Int, _ w: TransformerLayerTensor, _ bias: TransformerLayerTensor,
                                  layer: Int, module: String) throws -> [Double] {
        let shape = w.shape(weights.config)!
        let (outWidth, inner) = (shape[0], shape[1])
        var y = matmulTransposed(x, rows: rows, inner: inner, try tensor(w.name(layer: layer)), outWidth: outWidth)
        if bias.shape(weights.config) != nil {
            let b = try tensor(bias.name(layer: layer))
            for p in 0..<rows { for o in 0..<outWidth { y[p * outWidth + o] += b[o] } }
        }
        if let lora = adapters["model.layers.\(layer).\(module)"] {
            let xa = matmulTransposed(x, rows: rows, inner: inner, lora.a, outWidth: lora.rank)
            let delta = matmulTransposed(xa, rows: rows, inner: lora.rank, lora.b, outWidth: outWidth)
            for i in y.indices { y[i] += lora.scale * delta[i] }
        }
        return y
    }

    private func matmulTransposed(_ x: [Double], rows: Int, inner: Int, _ w: [Double], outWidth: Int) -> [Double] {
        var y = [Double](repeating: 0, count: rows * outWidth)
        for p in 0..<rows {
            for o in 0..<outWidth {
                var s = 0.0
                for i in 0..<inner { s += x[p * inner + i] * w[o * inner + i] }
                y[p * outWidth + o] = s
            }
        }
        return y
    }

    private func rmsNorm(_ x: [Double], _ w: [Double], rows: Int, width: Int, eps: Double) -> [Double] {
        var y = x
        for p in 0..<rows {
            var ss = 0.0
            for i in 0..<width { ss += x[p * width + i] * x[p * width + i] }
            let scale = 1 / (ss / Double(width) + eps).squareRoot()
            for i in 0..<width { y[p * width + i] = w[i] * (x[p * width + i] * scale) }
        }
        return y
    }

    private func rope(_ x: inout [Double], rows: Int, heads: Int, headDim: Int, inv: [Double]) {
        let half = headDim / 2
        for p in 0..<rows {
            for h in 0..<heads {
                let base = p * heads * headDim + h * headDim
                for i in 0..<half {
                    let angle = Double(p) * inv[i]
                    let (cs, sn) = (Foundation.cos(angle), Foundation.sin(angle))
                    let (a, b) = (x[base + i], x[base + i + half])
                    x[base + i] = a * cs - b * sn
                    x[base + i + half] = b * cs + a * sn
                }
            }
        }
    }

    private func attention(q: [Double], k: [Double], v: [Double], rows: Int, mask: [UInt8]) -> [Double] {
        let c = weights.config
        let d = c.headDim, group = c.headCount / c.kvHeadCount
        let scale = 1 / Double(d).squareRoot()
        var out = [Double](repeating: 0, count: rows * c.qDim)
        var scores = [Double](repeating: 0, count: rows)
        for h in 0..<c.headCount {
            let kvh = h / group
            for i in 0..<rows {
                var maxScore = -Double.infinity
                for j in 0...i where mask[j] == 1 {
                    var s = 0.0
                    for e in 0..<d { s += q[i * c.qDim + h * d + e] * k[j * c.kvDim + kvh * d + e] }
                    scores[j] = s * scale
                    maxScore = max(maxScore, scores[j])
                }
                var total = 0.0
                for j in 0...i where mask[j] == 1 {
                    scores[j] = Foundation.exp(scores[j] - maxScore)
                    total += scores[j]
                }
                for j in 0...i where mask[j] == 1 {
                    let p = scores[j] / total
                    for e in 0..<d { out[i * c.qDim + h * d + e] += p * v[j * c.kvDim + kvh * d + e] }
                }
            }
        }
        return out
    }
}
