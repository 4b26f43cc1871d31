import OpConvertCore
import OpConvertTensors
import Foundation

/// One adapted module of a LoRA/DoRA adapter, with PEFT's key names already decoded.
public struct LoraModule: Sendable {
    /// Module path without `base_model.model.` (e.g. model.layers.0.self_attn.q_proj).
    public var path: String
    public var a: TensorData
    public var b: TensorData
    /// Saved as lora_embedding_A/B: the delta is transposed against the weight.
    public var isEmbedding: Bool
    /// `lora_B.bias` (lora_bias=True).
    public var bias: TensorData?
    /// DoRA's magnitude vector.
    public var magnitude: TensorData?
    public var rank: Int
    public var scaling: Double
}

/// A LoRA/DoRA adapter ready to merge: from a PEFT directory, or materialized from an OP
/// checkpoint.
public struct LoraAdapter: Sendable {
    /// Where it came from, for messages.
    public var path: String
    public var config: LoraConfig
    public var modules: [LoraModule]
    /// Full tensors that replace base tensors (modules_to_save), by base-relative name.
    public var replacements: [(name: String, data: TensorData)]

    static let prefix = "base_model.model."

    /// Opens a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    public static func openPEFT(_ path: String) throws -> LoraAdapter {
        let configPath = FileSystem.join(path, "adapter_config.json")
        guard FileSystem.isRegularFile(configPath) else {
            try InputCheck.requireAdapterDirectory(path)
            throw AdapterError.missingConfig(path: path)
        }
        let json: JSONValue
        do { json = try JSONParser.parse(try FileSystem.readAll(configPath)) } catch let e as JSONParseError {
            throw AdapterError.invalidConfig(path: configPath, reason: "not valid JSON: \(e.message)")
        }
        let config = try LoraConfig(json: json, path: configPath)
        config.warnAboutDefaults(file: configPath)
        try config.checkMergeable(path: path)
        let weights = FileSystem.join(path, "adapter_model.safetensors")
        guard FileSystem.isRegularFile(weights) else {
            if FileSystem.isRegularFile(FileSystem.join(path, "adapter_model.bin")) {
                throw AdapterError.pickleWeights(path: FileSystem.join(path, "adapter_model.bin"))
            }
            throw AdapterError.invalidConfig(path: path, reason: "no adapter_model.safetensors")
        }
        let store = try TensorStore.open(weights)
        return try fromTensors(path: path, config: config,
                               tensors: store.entries.map { ($0.info.name, TensorData.stored(store, $0)) })
    }

    /// Groups PEFT-named tensors into modules and checks them against the config.
    public static func fromTensors(path: String, config: LoraConfig, tensors: [(String, TensorData)]) throws -> LoraAdapter {
        struct Parts { var a, b, bias, magnitude: TensorData?; var embedding = false }
        var parts: [String: Parts] = [:]
        var order: [String] = []
        var replacements: [(String, TensorData)] = []
        let suffixes: [(String, WritableKeyPath<Parts, TensorData?>, Bool)] = [
            (".lora_A.weight", \.a, false), (".lora_B.weight", \.b, false), (".lora_B.bias", \.bias, false),
            (".lora_embedding_A", \.a, true), (".lora_embedding_B", \.b, true),
            (".lora_magnitude_vector", \.magnitude, false), (".lora_magnitude_vector.weight", \.magnitude, false),
        ]
        for (key, data) in tensors {
            let name = key.hasPrefix(prefix) ? String(key.dropFirst(prefix.count)) : key
            guard let (suffix, keyPath, embedding) = suffixes.first(where: { name.hasSuffix($0.0) }) else {
                // Full tensors: modules_to_save copies, and `<module>.base_layer.weight`,
                // which PEFT saves when it targets embeddings/lm_head and copies over the
                // base weight before merging.
                replacements.append((name.replacingOccurrences(of: ".base_layer.", with: "."), data))
                continue
            }
            var module = String(name.dropLast(suffix.count))
            if module.hasSuffix(".default") { module = String(module.dropLast(".default".count)) }
            if parts[module] == nil { parts[module] = Parts(); order.append(module) }
            parts[module]![keyPath: keyPath] = data
            if embedding { parts[module]!.embedding = true }
        }
        var modules: [LoraModule] = []
        for m in order {
            let p = parts[m]!
            guard let a = p.a, let b = p.b else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: p.a == nil ? "lora_A is missing" : "lora_B is missing")
            }
            let rank = config.rank(for: m)
            guard a.shape.count >= 2, b.shape.count >= 2 else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "lora_A \(a.shape) and lora_B \(b.shape) must be matrices")
            }
            guard a.shape[0] == rank else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "rank r = \(rank) in adapter_config.json but lora_A has shape \(a.shape) (first dimension should be \(rank))")
            }
            guard b.shape[1] == rank else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "lora_B has shape \(b.shape); its second dimension should be r = \(rank)")
            }
            if config.useDoRA && p.magnitude == nil {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "use_dora is set but lora_magnitude_vector is missing")
            }
            for t in [a, b] + [p.magnitude, p.bias].compactMap({ $0 }) where !t.dtype.isDecodableFloat {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "\(t.origin) has dtype \(t.dtype.rawValue), expected a float type")
            }
            modules.append(LoraModule(path: m, a: a, b: b, isEmbedding: p.embedding, bias: p.bias,
                                      magnitude: p.magnitude, rank: rank, scaling: config.scaling(for: m)))
        }
        return LoraAdapter(path: path, config: config, modules: modules, replacements: replacements)
    }
}
