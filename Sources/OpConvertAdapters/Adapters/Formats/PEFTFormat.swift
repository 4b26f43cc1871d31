import Foundation
import OpConvertCore
import OpConvertTensors

/// PEFT LoRA/DoRA adapters: adapter_config.json + adapter_model.safetensors, tensors named
/// `base_model.model.<module>.lora_A.weight` ... (facts: notes/formats.md).
public enum PEFTFormat: AdapterFormat {
    public static let id = AdapterFormatID.peft
    public static let expected = "a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"
    package static let configName = "adapter_config.json"
    package static let weightsName = "adapter_model.safetensors"
    static let prefix = "base_model.model."

    /// Any directory with an adapter_config.json that a more specific format did not take.
    public static func probe(_ path: String) -> Bool {
        FileSystem.isDirectory(path) && FileSystem.isRegularFile(FileSystem.join(path, configName))
    }

    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        let (adapter, _) = try openWithConfig(path)
        return adapter
    }

    /// The adapter and its parsed config (inspect and convert show or keep the config).
    package static func openWithConfig(_ path: String) throws -> (Adapter, LoraConfig) {
        let configPath = FileSystem.join(path, configName)
        guard FileSystem.isRegularFile(configPath) else {
            try InputCheck.requireAdapterDirectory(path)
            throw AdapterError.missingConfig(path: path)
        }
        let config = try readConfig(configPath)
        config.warnAboutDefaults(file: configPath)
        try config.checkMergeable(path: path)
        let store = try openWeights(path)
        let adapter = try fromTensors(path: path, config: config,
                                      tensors: store.entries.map { ($0.info.name, TensorData.stored(store, $0)) })
        return (adapter, config)
    }

    /// adapter_config.json as a LoraConfig (malformed JSON named as such).
    package static func readConfig(_ configPath: String) throws -> LoraConfig {
        try LoraConfig(json: try readJSON(configPath), path: configPath)
    }

    /// adapter_config.json parsed (PEFT's adapter types share it).
    package static func readJSON(_ configPath: String) throws -> JSONValue {
        do { return try JSONParser.parse(try FileSystem.readAll(configPath)) } catch let e as JSONParseError {
            throw AdapterError.invalidConfig(path: configPath, reason: "not valid JSON: \(e.message)")
        }
    }

    /// adapter_model.safetensors of a PEFT-saved directory; a pickle (.bin) named as such.
    package static func openWeights(_ path: String) throws -> TensorStore {
        let weights = FileSystem.join(path, weightsName)
        guard FileSystem.isRegularFile(weights) else {
            if FileSystem.isRegularFile(FileSystem.join(path, "adapter_model.bin")) {
                throw AdapterError.pickleWeights(path: FileSystem.join(path, "adapter_model.bin"))
            }
            throw AdapterError.invalidConfig(path: path, reason: "no \(weightsName)")
        }
        return try TensorStore.open(weights)
    }

    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let (adapter, c) = try openWithConfig(path)
        var summary = AdapterSummary.of(adapter, kind: "peft-adapter", weightsFile: FileSystem.join(path, weightsName))
        summary.details = ["peft_type": c.peftType, "r": String(c.r), "lora_alpha": JSONWriter.formatDouble(c.loraAlpha),
                           "use_dora": String(c.useDoRA), "use_rslora": String(c.useRSLoRA), "fan_in_fan_out": String(c.fanInFanOut),
                           "modules": String(adapter.modules.count), "modules_to_save": String(adapter.replacements.count)]
        return summary
    }

    /// Groups PEFT-named tensors into modules and checks them against the config.
    public static func fromTensors(path: String, config: LoraConfig, tensors: [(String, TensorData)]) throws -> Adapter {
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
                // save_embedding_layers on a modules_to_save module stores the wrapper's
                // state too: `original_module` is the base's own copy (not what the adapted
                // model uses), `modules_to_save[.default]` the trained one.
                if name.contains(".original_module.") { continue }
                let target = name.replacingOccurrences(of: ".base_layer.", with: ".")
                    .replacingOccurrences(of: ".modules_to_save.default.", with: ".").replacingOccurrences(of: ".modules_to_save.", with: ".")
                if let earlier = replacements.first(where: { $0.0 == target }) {
                    guard earlier.1.shape == data.shape, (try? earlier.1.floats()) == (try? data.floats()) else {
                        throw AdapterError.invalidTensors(path: path, module: target, reason: "\(key) and another saved copy of \(target) differ")
                    }
                    continue
                }
                replacements.append((target, data))
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
            modules.append(LoraModule(path: m, a: a, b: b, isEmbedding: p.embedding, bias: p.bias, magnitude: p.magnitude,
                                      rank: rank, scaling: config.scaling(for: m), fanInFanOut: config.fanInFanOut))
        }
        return Adapter(path: path, kind: config.useDoRA ? .peftDora : .peftLora, modules: modules, replacements: replacements)
    }

    // MARK: writing

    public static let canWrite = true

    /// Writes any low-rank adapter as PEFT LoRA/DoRA: one rank and alpha for the most
    /// common (rank, scaling), rank_pattern/alpha_pattern entries for the other modules, so
    /// that PEFT's s = alpha / r gives each module's scaling back exactly when alpha = s·r
    /// is exact in binary (it is for the scalings formats store: alpha/r, 1, powers of two).
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        if !adapter.deltas.isEmpty || !adapter.replacements.isEmpty {
            throw AdapterError.cannotWrite(path: path, reason: "\(adapter.path) has full-tensor changes (\(adapter.deltas.count + adapter.replacements.count)); only low-rank modules can be written as PEFT LoRA")
        }
        if let m = adapter.modules.first(where: { $0.bias != nil || $0.isEmbedding }) {
            throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has \(m.bias != nil ? "a LoRA bias" : "an embedding LoRA"), which this conversion does not write")
        }
        let dtype = options.dtype ?? .f32
        let config = peftConfig(for: adapter, baseModel: options.base?.directory)
        let layouts = adapter.modules.map {
            AdapterModuleLayout(path: $0.path, aShape: $0.a.shape, bShape: $0.b.shape, magnitudeCount: $0.magnitude?.elementCount)
        }
        try PEFTAdapterWriter.write(to: path, config: config, layouts: layouts, dtype: dtype, overwrite: options.overwrite,
                                    inputs: options.inputs) { i in
            let m = adapter.modules[i]
            return MaterializedModule(path: m.path, a: try m.a.floats(), aShape: m.a.shape, b: try m.b.floats(), bShape: m.b.shape,
                                      magnitude: try m.magnitude?.floats(), rank: m.rank)
        }
        return [weightsName, configName]
    }

    /// adapter_config.json for a neutral adapter (PEFT's fields and defaults).
    static func peftConfig(for adapter: Adapter, baseModel: String?) -> JSONValue {
        let modules = adapter.modules
        func alpha(_ m: LoraModule) -> Double { m.scaling * Double(m.rank) }
        // Integral values as JSON integers, as PEFT configs hold them (16, not 16.0).
        func number(_ d: Double) -> JSONValue { d == d.rounded() && abs(d) < 1e15 ? .int(Int64(d)) : .double(d) }
        // The most common (r, alpha) is the default; ties go to the first module's.
        var counts: [String: (r: Int, alpha: Double, n: Int, first: Int)] = [:]
        for (i, m) in modules.enumerated() {
            let key = "\(m.rank)/\(alpha(m))"
            counts[key, default: (m.rank, alpha(m), 0, i)].n += 1
        }
        let main = counts.values.max { ($0.n, -$0.first) < ($1.n, -$1.first) }
        let r = main?.r ?? 8, loraAlpha = main?.alpha ?? 8
        var rankPattern: [(String, JSONValue)] = [], alphaPattern: [(String, JSONValue)] = []
        for m in modules {
            if m.rank != r { rankPattern.append((m.path, .int(Int64(m.rank)))) }
            if alpha(m) != loraAlpha { alphaPattern.append((m.path, number(alpha(m)))) }
        }
        // target_modules: the full module paths, so PEFT creates exactly these modules (bare
        // leaf names would also adapt same-named modules the adapter does not cover).
        let targets = modules.map(\.path)
        let fields: [(String, JSONValue)] = [
            ("alpha_pattern", .object(alphaPattern)),
            ("base_model_name_or_path", baseModel.map { .string($0) } ?? .null),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(modules.first?.fanInFanOut ?? false)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("lora_alpha", number(loraAlpha)),
            ("lora_dropout", .double(0)),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .int(Int64(r))),
            ("rank_pattern", .object(rankPattern)),
            ("target_modules", .array(targets.map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")),
            ("use_dora", .bool(adapter.usesDoRA)),
            ("use_rslora", .bool(false)),
        ]
        return .object(fields)
    }
}

extension Adapter {
    /// Opens a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    public static func openPEFT(_ path: String) throws -> Adapter {
        try PEFTFormat.open(path, options: AdapterOpenOptions())
    }
}
