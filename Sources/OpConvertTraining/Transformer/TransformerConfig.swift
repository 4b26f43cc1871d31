import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// The decoder families `train` adapts. They share one computation (RMSNorm, RoPE,
/// grouped-query causal attention, SiLU-gated MLP) and differ in biases and sliding windows.
public enum TransformerArchitecture: String, Sendable, CaseIterable {
    case llama = "LlamaForCausalLM"
    case mistral = "MistralForCausalLM"
    case qwen2 = "Qwen2ForCausalLM"

    public var modelType: String {
        switch self {
        case .llama: return "llama"
        case .mistral: return "mistral"
        case .qwen2: return "qwen2"
        }
    }

    /// transformers' config class defaults where config.json may leave a field out.
    var defaultMaxPositionEmbeddings: Int {
        switch self {
        case .llama: return 2048
        case .mistral: return 4096 * 32
        case .qwen2: return 32768
        }
    }
}

/// How RoPE frequencies are rescaled (transformers' `rope_type`).
public enum RopeScaling: Sendable, Equatable {
    case none
    case linear(factor: Double)
    case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositionEmbeddings: Int)
}

/// A Hugging Face `config.json` of a LLaMA-family causal LM, with transformers' defaults
/// applied. Reading refuses anything that would change the maths and is not implemented,
/// naming the field.
public struct TransformerConfig: Sendable, Equatable {
    public var path: String
    public var architecture: TransformerArchitecture
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    /// Biases on q_proj, k_proj, v_proj.
    public var qkvBias: Bool
    /// Bias on o_proj (LLaMA's attention_bias covers all four projections; Qwen2 has none here).
    public var outputBias: Bool
    /// Biases on gate_proj, up_proj, down_proj.
    public var mlpBias: Bool
    /// The attention window of the layers that have one (nil: every layer attends to the whole prefix).
    public var slidingWindow: Int?
    /// The stored dtype config.json names ("dtype", or "torch_dtype" before transformers 5), as written.
    public var torchDType: String?

    public var qDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }

    /// Reads `config.json` from a model directory, or the file itself.
    public static func read(_ path: String) throws -> TransformerConfig {
        let file = FileSystem.isDirectory(path) ? FileSystem.join(path, "config.json") : path
        guard FileSystem.isRegularFile(file) else {
            throw InputError.notFound(path: file, expected: "a transformers config.json")
        }
        let bytes = try FileSystem.readAll(file)
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch {
            throw ModelConfigError(path: file, reason: "not valid JSON: \(error.message)")
        }
        return try parse(root, path: file)
    }

    public static func parse(_ root: JSONValue, path: String) throws(TransformerError) -> TransformerConfig {
        guard case .object = root else {
            throw .invalidConfig(path: path, field: "(top level)", reason: "is a JSON \(root.typeName), not an object")
        }
        let r = FieldReader(root: root, path: path)
        let arch = try r.architecture()

        let vocab = try r.positiveInt("vocab_size")
        let hidden = try r.positiveInt("hidden_size")
        let inter = try r.positiveInt("intermediate_size")
        let layers = try r.positiveInt("num_hidden_layers")
        let heads = try r.positiveInt("num_attention_heads")
        let kvHeads = try r.positiveInt("num_key_value_heads", default: heads)
        guard heads % kvHeads == 0 else {
            throw .invalidConfig(path: path, field: "num_key_value_heads",
                                 reason: "\(kvHeads) does not divide num_attention_heads \(heads)")
        }
        // transformers: getattr(config, "head_dim", None) or hidden_size // num_attention_heads
        let headDim = try r.positiveInt("head_dim", default: hidden / heads)
        guard headDim > 0 else {
            throw .invalidConfig(path: path, field: "hidden_size", reason: "\(hidden) is smaller than num_attention_heads \(heads)")
        }
        guard headDim % 2 == 0 else {
            throw .unsupportedConfig(path: path, field: "head_dim", reason: "\(headDim) is odd; rotary embeddings rotate pairs")
        }
        let eps = try r.positiveDouble("rms_norm_eps", default: 1e-6)
        let maxPos = try r.positiveInt("max_position_embeddings", default: arch.defaultMaxPositionEmbeddings)

        let act = try r.string("hidden_act") ?? "silu"
        guard act == "silu" else {
            throw .unsupportedConfig(path: path, field: "hidden_act", reason: "\"\(act)\" (only \"silu\" is implemented)")
        }
        let dropout = try r.double("attention_dropout") ?? 0
        guard dropout == 0 else {
            throw .unsupportedConfig(path: path, field: "attention_dropout",
                                     reason: "\(dropout) (training runs without dropout; set it to 0.0)")
        }
        for field in ["quantization_config", "attn_logit_softcapping", "final_logit_softcapping"] where r.isSet(field) {
            throw .unsupportedConfig(path: path, field: field, reason: "is set; \(arch.rawValue) is implemented without it")
        }

        let tied = try r.bool("tie_word_embeddings") ?? false
        var qkvBias = false, outputBias = false, mlpBias = false
        switch arch {
        case .llama:
            let attention = try r.bool("attention_bias") ?? false
            qkvBias = attention
            outputBias = attention
            mlpBias = try r.bool("mlp_bias") ?? false
        case .mistral:
            break  // MistralAttention / MistralMLP are built with bias=False whatever the config says
        case .qwen2:
            qkvBias = true
        }

        let (theta, scaling) = try r.rope(maxPositionEmbeddings: maxPos, headDim: headDim)
        let window = try r.slidingWindow(arch, layers: layers)
        // (`??` would take the right side as an untyped-throwing autoclosure)
        var dtype = try r.string("dtype")
        if dtype == nil { dtype = try r.string("torch_dtype") }

        return TransformerConfig(path: path, architecture: arch, vocabSize: vocab, hiddenSize: hidden,
                                 intermediateSize: inter, layerCount: layers, headCount: heads, kvHeadCount: kvHeads,
                                 headDim: headDim, rmsNormEps: eps, ropeTheta: theta, ropeScaling: scaling,
                                 maxPositionEmbeddings: maxPos, tieWordEmbeddings: tied, qkvBias: qkvBias,
                                 outputBias: outputBias, mlpBias: mlpBias, slidingWindow: window, torchDType: dtype)
    }

    /// Refuses a training sequence longer than the sliding window: the windowed attention
    /// (keys within `sliding_window` positions of the query) is not implemented.
    public func checkSequenceLength(_ length: Int) throws(TransformerError) {
        if let w = slidingWindow, w < length {
            throw .unsupportedConfig(path: path, field: "sliding_window",
                                     reason: "\(w) is shorter than the training sequence (\(length) tokens); windowed attention is not implemented")
        }
    }

    /// RoPE inverse frequencies (headDim / 2 values), computed as transformers computes them in
    /// float32: `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, then the rope_type's
    /// rescaling, operation by operation in f32 (`a / t` on a tensor is `t.reciprocal() * a`).
    /// The power is taken in double and rounded once, i.e. correctly rounded.
    public func ropeInverseFrequencies() -> [Float] {
        let dim = headDim
        let base = Double(Float(ropeTheta))
        var inv = stride(from: 0, to: dim, by: 2).map { i -> Float in
            let exponent = Float(i) / Float(dim)
            return 1 / Float(Foundation.pow(base, Double(exponent)))
        }
        switch ropeScaling {
        case .none:
            break
        case let .linear(factor):
            inv = inv.map { $0 / Float(factor) }
        case let .llama3(factor, low, high, old):
            let lowFreqWavelen = Float(Double(old) / low)
            let highFreqWavelen = Float(Double(old) / high)
            let f = Float(factor)
            inv = inv.map { x in
                let wavelen = (1 / x) * Float(2 * Double.pi)
                let scaled = wavelen > lowFreqWavelen ? x / f : x
                let isMedium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen)
                guard isMedium else { return scaled }
                let smooth = ((1 / wavelen) * Float(old) - Float(low)) / Float(high - low)
                return (1 - smooth) * scaled / f + smooth * scaled
            }
        }
        return inv
    }
}

/// Typed access to config.json members; every error names the field.
private struct FieldReader {
    let root: JSONValue
    let path: String

    func isSet(_ field: String) -> Bool {
        if let v = root[field], v != .null { return true }
        return false
    }

    func int(_ field: String, in object: JSONValue? = nil, prefix: String = "") throws(TransformerError) -> Int? {
        guard let v = (object ?? root)[field], v != .null else { return nil }
        if let i = v.intValue { return i }
        // 8.0 for an integer field: transformers would keep a float and fail later; refuse it here.
        throw .invalidConfig(path: path, field: prefix + field, reason: "must be an integer, not \(describe(v))")
    }

    func positiveInt(_ field: String, default value: Int? = nil) throws(TransformerError) -> Int {
        guard let i = try int(field) ?? value else {
            throw .invalidConfig(path: path, field: field, reason: "is missing")
        }
        guard i > 0 else { throw .invalidConfig(path: path, field: field, reason: "must be positive, not \(i)") }
        return i
    }

    func double(_ field: String, in object: JSONValue? = nil, prefix: String = "") throws(TransformerError) -> Double? {
        guard let v = (object ?? root)[field], v != .null else { return nil }
        switch v {
        case .int, .uint, .double, .number:
            if let d = v.doubleValue { return d }
        default: break
        }
        throw .invalidConfig(path: path, field: prefix + field, reason: "must be a number, not \(describe(v))")
    }

    func positiveDouble(_ field: String, in object: JSONValue? = nil, prefix: String = "",
                        default value: Double? = nil) throws(TransformerError) -> Double {
        guard let d = try double(field, in: object, prefix: prefix) ?? value else {
            throw .invalidConfig(path: path, field: prefix + field, reason: "is missing")
        }
        guard d > 0, d.isFinite else {
            throw .invalidConfig(path: path, field: prefix + field, reason: "must be a positive number, not \(d)")
        }
        return d
    }

    func string(_ field: String, in object: JSONValue? = nil, prefix: String = "") throws(TransformerError) -> String? {
        guard let v = (object ?? root)[field], v != .null else { return nil }
        guard let s = v.stringValue else {
            throw .invalidConfig(path: path, field: prefix + field, reason: "must be a string, not \(describe(v))")
        }
        return s
    }

    func bool(_ field: String) throws(TransformerError) -> Bool? {
        guard let v = root[field], v != .null else { return nil }
        guard let b = v.boolValue else {
            throw .invalidConfig(path: path, field: field, reason: "must be true or false, not \(describe(v))")
        }
        return b
    }

    func describe(_ v: JSONValue) -> String {
        switch v {
        case let .string(s): return "the string \"\(s)\""
        case .double, .number: return "\(JSONWriter.serialize(v))"
        default: return "a JSON \(v.typeName)"
        }
    }

    /// From `architectures` (its one name), else `model_type`; the two must agree.
    func architecture() throws(TransformerError) -> TransformerArchitecture {
        let supported = TransformerArchitecture.allCases.map(\.rawValue).joined(separator: ", ")
        let modelType = try string("model_type")
        var arch: TransformerArchitecture?
        if let v = root["architectures"], v != .null {
            guard let names = v.arrayValue, !names.isEmpty, names.allSatisfy({ $0.stringValue != nil }) else {
                throw .invalidConfig(path: path, field: "architectures", reason: "must be a non-empty array of class names, not \(describe(v))")
            }
            let distinct = Array(Set(names.compactMap(\.stringValue))).sorted()
            guard distinct.count == 1, let a = TransformerArchitecture(rawValue: distinct[0]) else {
                throw .unsupportedConfig(path: path, field: "architectures",
                                         reason: "\(distinct.joined(separator: ", ")) (supported: \(supported))")
            }
            arch = a
        }
        if let modelType {
            guard let fromType = TransformerArchitecture.allCases.first(where: { $0.modelType == modelType }) else {
                throw .unsupportedConfig(path: path, field: "model_type", reason: "\"\(modelType)\" (supported: llama, mistral, qwen2)")
            }
            if let a = arch, a != fromType {
                throw .invalidConfig(path: path, field: "model_type",
                                     reason: "\"\(modelType)\" contradicts architectures \(a.rawValue) (model_type \"\(a.modelType)\")")
            }
            arch = fromType
        }
        guard let arch else {
            throw .invalidConfig(path: path, field: "architectures", reason: "is missing, and so is model_type (supported: \(supported))")
        }
        return arch
    }

    /// rope_theta and the scaling, from transformers 5's `rope_parameters` or the older
    /// top-level `rope_theta` + `rope_scaling` (what `standardize_rope_params` merges).
    func rope(maxPositionEmbeddings: Int, headDim: Int) throws(TransformerError) -> (Double, RopeScaling) {
        var params: JSONValue?
        var name = "rope_parameters"
        for field in ["rope_parameters", "rope_scaling"] {
            guard let v = root[field], v != .null else { continue }
            guard case .object = v else {
                throw .invalidConfig(path: path, field: field, reason: "must be an object, not \(describe(v))")
            }
            params = v
            name = field
            break
        }
        let prefix = name + "."
        if let params, let members = params.objectValue, members.contains(where: { if case .object = $0.1 { return true } else { return false } }) {
            throw .unsupportedConfig(path: path, field: name, reason: "per-layer-type rope parameters (nested objects) are not implemented")
        }
        let topTheta = try double("rope_theta")
        let theta = try positiveDouble("rope_theta", in: params ?? .object([]), prefix: params == nil ? "" : prefix,
                                       default: topTheta ?? 10000)
        let partial: [(value: Double?, field: String)] = [
            (try double("partial_rotary_factor"), "partial_rotary_factor"),
            (try double("partial_rotary_factor", in: params ?? .object([]), prefix: prefix), prefix + "partial_rotary_factor"),
        ]
        for (value, field) in partial {
            if let p = value, p != 1 {
                throw .unsupportedConfig(path: path, field: field, reason: "\(p) (only full rotary embeddings are implemented)")
            }
        }
        guard let params else { return (theta, .none) }
        var type = try string("rope_type", in: params, prefix: prefix)
        if type == nil { type = try string("type", in: params, prefix: prefix) }
        switch type ?? "default" {
        case "default":
            return (theta, .none)
        case "linear":
            return (theta, .linear(factor: try positiveDouble("factor", in: params, prefix: prefix)))
        case "llama3":
            let factor = try positiveDouble("factor", in: params, prefix: prefix)
            let low = try positiveDouble("low_freq_factor", in: params, prefix: prefix)
            let high = try positiveDouble("high_freq_factor", in: params, prefix: prefix)
            guard high != low else {
                throw .invalidConfig(path: path, field: prefix + "high_freq_factor", reason: "equals low_freq_factor (\(low)): the smoothing divides by their difference")
            }
            // standardize_rope_params gives a top-level original_max_position_embeddings priority
            var old = try int("original_max_position_embeddings")
            if old == nil { old = try int("original_max_position_embeddings", in: params, prefix: prefix) }
            let oldContext = old ?? maxPositionEmbeddings
            guard oldContext > 0 else {
                throw .invalidConfig(path: path, field: prefix + "original_max_position_embeddings", reason: "must be positive, not \(oldContext)")
            }
            return (theta, .llama3(factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: oldContext))
        default:
            throw .unsupportedConfig(path: path, field: prefix + "rope_type", reason: "\"\(type ?? "")\" (implemented: default, linear, llama3)")
        }
    }

    /// The window the model's attention uses, if any layer has one (transformers semantics:
    /// Mistral applies `sliding_window` to every layer; Qwen2 only with `use_sliding_window`,
    /// to the layers `layer_types` marks "sliding_attention" (default: index >= max_window_layers);
    /// LLaMA has none).
    func slidingWindow(_ arch: TransformerArchitecture, layers: Int) throws(TransformerError) -> Int? {
        switch arch {
        case .llama:
            return nil
        case .mistral:
            guard let w = try int("sliding_window") else { return nil }
            guard w > 0 else { throw .invalidConfig(path: path, field: "sliding_window", reason: "must be positive, not \(w)") }
            return w
        case .qwen2:
            let use = try bool("use_sliding_window") ?? false
            let window = use ? try int("sliding_window") : nil
            var types: [String]
            if let v = root["layer_types"], v != .null {
                guard let a = v.arrayValue, a.count == layers, a.allSatisfy({ $0.stringValue != nil }) else {
                    throw .invalidConfig(path: path, field: "layer_types", reason: "must be an array of \(layers) strings (one per layer), not \(describe(v))")
                }
                types = a.compactMap(\.stringValue)
            } else {
                let firstWindowed = try int("max_window_layers") ?? 28
                types = (0..<layers).map { window != nil && $0 >= firstWindowed ? "sliding_attention" : "full_attention" }
            }
            if let bad = types.first(where: { $0 != "full_attention" && $0 != "sliding_attention" }) {
                throw .unsupportedConfig(path: path, field: "layer_types", reason: "\"\(bad)\" (implemented: full_attention, sliding_attention)")
            }
            guard types.contains("sliding_attention"), let window else { return nil }
            guard window > 0 else { throw .invalidConfig(path: path, field: "sliding_window", reason: "must be positive, not \(window)") }
            return window
        }
    }
}
