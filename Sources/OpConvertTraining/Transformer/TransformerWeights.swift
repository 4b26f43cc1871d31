import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// The tensors of one decoder layer, by their name under `model.layers.N.`.
public enum TransformerLayerTensor: String, Sendable, CaseIterable {
    case inputNorm = "input_layernorm.weight"
    case postAttentionNorm = "post_attention_layernorm.weight"
    case q = "self_attn.q_proj.weight"
    case qBias = "self_attn.q_proj.bias"
    case k = "self_attn.k_proj.weight"
    case kBias = "self_attn.k_proj.bias"
    case v = "self_attn.v_proj.weight"
    case vBias = "self_attn.v_proj.bias"
    case o = "self_attn.o_proj.weight"
    case oBias = "self_attn.o_proj.bias"
    case gate = "mlp.gate_proj.weight"
    case gateBias = "mlp.gate_proj.bias"
    case up = "mlp.up_proj.weight"
    case upBias = "mlp.up_proj.bias"
    case down = "mlp.down_proj.weight"
    case downBias = "mlp.down_proj.bias"

    /// The shape config.json implies, or nil when this model has no such tensor.
    public func shape(_ c: TransformerConfig) -> [Int]? {
        switch self {
        case .inputNorm, .postAttentionNorm: return [c.hiddenSize]
        case .q: return [c.qDim, c.hiddenSize]
        case .k, .v: return [c.kvDim, c.hiddenSize]
        case .o: return [c.hiddenSize, c.qDim]
        case .qBias: return c.qkvBias ? [c.qDim] : nil
        case .kBias, .vBias: return c.qkvBias ? [c.kvDim] : nil
        case .oBias: return c.outputBias ? [c.hiddenSize] : nil
        case .gate, .up: return [c.intermediateSize, c.hiddenSize]
        case .gateBias, .upBias: return c.mlpBias ? [c.intermediateSize] : nil
        case .down: return [c.hiddenSize, c.intermediateSize]
        case .downBias: return c.mlpBias ? [c.hiddenSize] : nil
        }
    }

    public func name(layer: Int) -> String { "model.layers.\(layer).\(rawValue)" }
}

/// A LLaMA-family model directory: its config and its weights, every tensor the config
/// implies present with the implied shape and a float dtype (F32, BF16, F16), nothing
/// else there. Values are read as f32 on request (`floats`); nothing is copied up front.
public struct TransformerWeights: Sendable {
    public static let embeddingName = "model.embed_tokens.weight"
    public static let finalNormName = "model.norm.weight"
    public static let lmHeadName = "lm_head.weight"
    public static let floatDTypes: [DType] = [.f32, .bf16, .f16]

    public let config: TransformerConfig
    public let store: TensorStore

    /// Opens `directory` (config.json plus model.safetensors or a sharded index).
    public static func open(_ directory: String) throws -> TransformerWeights {
        let config = try TransformerConfig.read(directory)
        let store = try TensorStore.open(directory)
        return try TransformerWeights(config: config, store: store)
    }

    public init(config: TransformerConfig, store: TensorStore) throws(TransformerError) {
        self.config = config
        self.store = store
        let expected = Self.expectedTensors(config)
        for (name, shape) in expected {
            guard let e = store.entry(named: name) else { throw .missingTensor(path: store.path, tensor: name) }
            guard e.info.shape == shape else {
                throw .badShape(path: store.fileName(e), tensor: name, expected: shape, actual: e.info.shape)
            }
            guard Self.floatDTypes.contains(e.info.dtype) else {
                throw .badDType(path: store.fileName(e), tensor: name, dtype: e.info.dtype.rawValue, expected: "F32, BF16 or F16")
            }
        }
        let known = Set(expected.map(\.name))
        let extra = store.entries.map(\.info.name).filter { !known.contains($0) && !Self.isIgnored($0, config) }
        if !extra.isEmpty { throw .unexpectedTensors(path: store.path, tensors: extra) }
    }

    /// Every tensor the config implies, in model order, with its shape.
    public static func expectedTensors(_ c: TransformerConfig) -> [(name: String, shape: [Int])] {
        var out: [(name: String, shape: [Int])] = [(embeddingName, [c.vocabSize, c.hiddenSize])]
        for l in 0..<c.layerCount {
            for t in TransformerLayerTensor.allCases {
                if let s = t.shape(c) { out.append((t.name(layer: l), s)) }
            }
        }
        out.append((finalNormName, [c.hiddenSize]))
        if !c.tieWordEmbeddings { out.append((lmHeadName, [c.vocabSize, c.hiddenSize])) }
        return out
    }

    /// Tensors transformers drops on load without changing the maths: the RoPE buffers old
    /// checkpoints saved, and a tied model's copy of the embedding as lm_head.
    static func isIgnored(_ name: String, _ c: TransformerConfig) -> Bool {
        if name.hasSuffix(".rotary_emb.inv_freq") { return true }
        return c.tieWordEmbeddings && name == lmHeadName
    }

    /// The weight that projects to logits: lm_head, or the embedding when tied.
    public var outputProjectionName: String { config.tieWordEmbeddings ? Self.embeddingName : Self.lmHeadName }

    public func floats(_ name: String) throws -> [Float] {
        guard let e = store.entry(named: name) else { throw TransformerError.missingTensor(path: store.path, tensor: name) }
        return try TensorData.stored(store, e).floats()
    }

    public func floats(_ tensor: TransformerLayerTensor, layer: Int) throws -> [Float]? {
        guard tensor.shape(config) != nil else { return nil }
        return try floats(tensor.name(layer: layer))
    }
}
