import Foundation
import OpConvertCore
import OpConvertTensors

/// mlx-lm adapters: adapters.safetensors + adapter_config.json (fine_tune_type, num_layers,
/// lora_parameters {rank, scale, dropout, keys?}). Tensors are `<module>.lora_a` [in, r],
/// `<module>.lora_b` [r, out] and, for DoRA, `<module>.m` [out]; module names are mlx-lm's
/// model paths (for Llama the transformers names). mlx-lm's forward is
/// y = W x + scale·(x·lora_a)·lora_b, so PEFT's A = lora_aᵀ, B = lora_bᵀ, s = scale; its DoRA
/// rescales each output row of W + s·BA to m (norm over the input axis), as PEFT's DoRA does.
/// fine_tune_type full saves whole tensors of the trained layers: replacements.
public enum MLXFormat: AdapterFormat {
    public static let id = AdapterFormatID.mlx
    public static let expected = "an mlx-lm adapter directory (adapter_config.json + adapters.safetensors)"
    static let configName = "adapter_config.json"
    static let weightsName = "adapters.safetensors"

    /// A directory holding adapters.safetensors, or an adapter_config.json with mlx-lm's
    /// fields (so that a missing weights file is reported as an mlx-lm problem).
    public static func probe(_ path: String) -> Bool {
        guard FileSystem.isDirectory(path) else { return false }
        if FileSystem.isRegularFile(FileSystem.join(path, weightsName)) { return true }
        let config = FileSystem.join(path, configName)
        guard FileSystem.isRegularFile(config), let bytes = try? FileSystem.readAll(config),
              let json = try? JSONParser.parse(bytes) else { return false }
        return json["lora_parameters"] != nil || json["fine_tune_type"] != nil
    }

    /// The fields of adapter_config.json that decide what the tensors mean.
    struct Config {
        enum FineTuneType: String { case lora, dora, full }
        var fineTuneType: FineTuneType
        var numLayers: Int?
        var rank: Int?
        var scale: Double?
        var keys: [String]?
    }

    static func readConfig(_ path: String) throws -> Config {
        let configPath = FileSystem.join(path, configName)
        guard FileSystem.isRegularFile(configPath) else {
            throw AdapterError.invalidConfig(path: path, reason: "no \(configName) next to \(weightsName) (mlx-lm saves fine_tune_type, num_layers and lora_parameters there)")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(try FileSystem.readAll(configPath)) } catch let e as JSONParseError {
            throw AdapterError.invalidConfig(path: configPath, reason: "not valid JSON: \(e.message)")
        }
        guard json.objectValue != nil else { throw AdapterError.invalidConfig(path: configPath, reason: "not a JSON object") }
        // mlx-lm's own default when the field is absent.
        let typeName = json["fine_tune_type"]?.stringValue ?? (json["fine_tune_type"] == nil ? "lora" : "")
        guard let type = Config.FineTuneType(rawValue: typeName) else {
            throw AdapterError.invalidConfig(path: configPath, reason: "fine_tune_type \(json["fine_tune_type"].map { JSONWriter.serialize($0) } ?? "") is not one mlx-lm knows (lora, dora, full)")
        }
        var config = Config(fineTuneType: type, numLayers: json["num_layers"]?.intValue)
        guard type != .full else { return config }
        guard let params = json["lora_parameters"], params.objectValue != nil else {
            throw AdapterError.invalidConfig(path: configPath, reason: "fine_tune_type \(type.rawValue) needs a lora_parameters object")
        }
        guard let rank = params["rank"]?.intValue, rank > 0 else {
            throw AdapterError.invalidConfig(path: configPath, reason: "lora_parameters.rank must be a positive integer")
        }
        guard let scale = params["scale"]?.doubleValue, scale.isFinite else {
            let hint = params["alpha"] != nil ? " (it has alpha; mlx-lm uses scale, the factor itself)" : ""
            throw AdapterError.invalidConfig(path: configPath, reason: "lora_parameters.scale is missing or not a finite number\(hint)")
        }
        config.rank = rank
        config.scale = scale
        if let keys = params["keys"], keys != .null {
            guard let list = keys.arrayValue?.compactMap(\.stringValue), list.count == keys.arrayValue?.count else {
                throw AdapterError.invalidConfig(path: configPath, reason: "lora_parameters.keys must be a list of module names")
            }
            config.keys = list
        }
        return config
    }

    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        try openWithConfig(path, base: options.base).adapter
    }

    static func openWithConfig(_ path: String, base: TensorStore?) throws -> (adapter: Adapter, config: Config) {
        let weights = FileSystem.join(path, weightsName)
        guard FileSystem.isRegularFile(weights) else {
            throw AdapterError.invalidConfig(path: path, reason: "no \(weightsName)")
        }
        let config = try readConfig(path)
        if let base { try refuseQuantized(base, adapter: path) }
        let store = try TensorStore.open(weights)
        var details = ["fine_tune_type": config.fineTuneType.rawValue, "num_layers": config.numLayers.map(String.init) ?? "(none)"]
        if config.fineTuneType == .full {
            // Whole tensors of the trained layers, under the model's own names.
            for e in store.entries where !e.info.dtype.isDecodableFloat {
                throw AdapterError.invalidTensors(path: path, module: e.info.name, reason: "dtype \(e.info.dtype.rawValue), expected a float type")
            }
            details["tensors"] = String(store.entries.count)
            return (Adapter(path: path, kind: .mlxFull, modules: [],
                            replacements: store.entries.map { ($0.info.name, TensorData.stored(store, $0)) }, details: details), config)
        }
        let rank = config.rank ?? 0, scale = config.scale ?? 0
        struct Parts { var a, b, m: TensorData? }
        var parts: [String: Parts] = [:]
        var order: [String] = []
        for e in store.entries {
            let name = e.info.name
            let leaf: WritableKeyPath<Parts, TensorData?>
            let module: String
            if name.hasSuffix(".lora_a") { leaf = \.a; module = String(name.dropLast(7)) }
            else if name.hasSuffix(".lora_b") { leaf = \.b; module = String(name.dropLast(7)) }
            else if name.hasSuffix(".m") { leaf = \.m; module = String(name.dropLast(2)) }
            else {
                throw AdapterError.invalidTensors(path: path, module: name, reason: "not an mlx-lm adapter tensor (expected <module>.lora_a, .lora_b or .m for fine_tune_type \(config.fineTuneType.rawValue))")
            }
            if parts[module] == nil { parts[module] = Parts(); order.append(module) }
            parts[module]![keyPath: leaf] = .stored(store, e)
        }
        var modules: [LoraModule] = []
        for name in order {
            let p = parts[name]!
            guard let a = p.a, let b = p.b else {
                throw AdapterError.invalidTensors(path: path, module: name, reason: p.a == nil ? "lora_a is missing" : "lora_b is missing")
            }
            for t in [a, b] + [p.m].compactMap({ $0 }) where !t.dtype.isDecodableFloat {
                throw AdapterError.invalidTensors(path: path, module: name, reason: "\(t.origin) has dtype \(t.dtype.rawValue), expected a float type")
            }
            if a.shape.count == 3 || b.shape.count == 3 {
                throw AdapterError.unsupported(path: path, reason: "module \(name): 3-D lora_a/lora_b (mlx-lm's mixture-of-experts LoRASwitchLinear) are not supported")
            }
            guard a.shape.count == 2, b.shape.count == 2 else {
                throw AdapterError.invalidTensors(path: path, module: name, reason: "lora_a \(a.shape) and lora_b \(b.shape) must be matrices")
            }
            guard a.shape[1] == b.shape[0] else {
                throw AdapterError.invalidTensors(path: path, module: name, reason: "lora_a has shape \(a.shape) and lora_b \(b.shape): their ranks (\(a.shape[1]) and \(b.shape[0])) differ")
            }
            guard a.shape[1] == rank else {
                throw AdapterError.invalidTensors(path: path, module: name, reason: "lora_parameters.rank is \(rank) but lora_a has shape \(a.shape) (second dimension should be \(rank))")
            }
            let magnitude: TensorData?
            switch (config.fineTuneType, p.m) {
            case (.dora, nil):
                throw AdapterError.invalidTensors(path: path, module: name, reason: "fine_tune_type is dora but \(name).m is missing")
            case (.lora, .some):
                throw AdapterError.invalidTensors(path: path, module: name, reason: "has a DoRA magnitude .m but fine_tune_type is lora")
            case let (_, m?):
                guard m.shape == [b.shape[1]] else {
                    throw AdapterError.invalidTensors(path: path, module: name, reason: "m has shape \(m.shape), expected [\(b.shape[1])] (one per output row)")
                }
                magnitude = m
            default:
                magnitude = nil
            }
            let leafName = name.split(separator: ".").last.map(String.init) ?? name
            modules.append(LoraModule(path: name, a: try transposed(a), b: try transposed(b),
                                      isEmbedding: leafName.contains("embed") || leafName == "wte",
                                      magnitude: magnitude, rank: rank, scaling: scale))
        }
        details["rank"] = String(rank)
        details["scale"] = JSONWriter.formatDouble(scale)
        details["keys"] = config.keys?.joined(separator: ", ") ?? "(every linear layer)"
        details["modules"] = String(modules.count)
        return (Adapter(path: path, kind: config.fineTuneType == .dora ? .mlxDora : .mlxLora, modules: modules, details: details), config)
    }

    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let (adapter, _) = try openWithConfig(path, base: nil)
        var summary = AdapterSummary.of(adapter, kind: "mlx-adapter", weightsFile: FileSystem.join(path, weightsName))
        summary.details = adapter.details
        return summary
    }

    /// mlx-lm's quantized bases (mlx_lm.convert -q) pack the weights into U32 words with
    /// per-group scales and biases: a merge there would have to re-quantize.
    static func refuseQuantized(_ base: TensorStore, adapter: String) throws {
        if let e = base.entries.first(where: { $0.info.name.hasSuffix(".scales") && base.entry(named: String($0.info.name.dropLast(7)) + ".weight")?.info.dtype == .u32 }) {
            let weight = String(e.info.name.dropLast(7)) + ".weight"
            throw AdapterError.unsupported(path: adapter, reason: "the base is quantized by mlx-lm (\(weight) is packed U32 with \(e.info.name)); merge into the unquantized model, or use mlx_lm.fuse --dequantize")
        }
    }

    /// A 2-D tensor's transpose, in f32 (mlx-lm stores the factors the other way round).
    static func transposed(_ t: TensorData) throws -> TensorData {
        let rows = t.shape[0], cols = t.shape[1]
        let v = try t.floats()
        var out = [Float](repeating: 0, count: v.count)
        for i in 0..<rows { for j in 0..<cols { out[j * rows + i] = v[i * cols + j] } }
        return .memory(values: out, shape: [cols, rows])
    }

    // MARK: writing

    public static let canWrite = true

    /// Writes a low-rank adapter as mlx-lm saves one. mlx-lm has one rank and one scale for all
    /// modules: a module with another scaling is written with the ratio folded into lora_b when
    /// the ratio is a power of two (exact), refused otherwise. mlx-lm adapts `keys` (names
    /// relative to a block) in the last `num_layers` blocks; modules of those blocks that the
    /// adapter lacks start with lora_b = 0 there (no change), which DoRA cannot express.
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        if !adapter.deltas.isEmpty || !adapter.replacements.isEmpty {
            throw AdapterError.cannotWrite(path: path, reason: "\(adapter.path) has full-tensor changes (\(adapter.deltas.count + adapter.replacements.count)); only low-rank modules can be written as an mlx-lm LoRA")
        }
        let modules = adapter.modules
        guard let first = modules.first else {
            throw AdapterError.cannotWrite(path: path, reason: "\(adapter.path) has no low-rank modules")
        }
        if let m = modules.first(where: { $0.bias != nil }) {
            throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has a LoRA bias, which mlx-lm adapters cannot hold")
        }
        if let m = modules.first(where: { $0.a.shape.count != 2 || $0.b.shape.count != 2 }) {
            throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has A \(m.a.shape) and B \(m.b.shape); mlx-lm LoRA factors are matrices (no convolutions)")
        }
        let dora = first.magnitude != nil
        if let m = modules.first(where: { ($0.magnitude != nil) != dora }) {
            throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) is \(dora ? "LoRA" : "DoRA") but \(first.path) is \(dora ? "DoRA" : "LoRA"); mlx-lm's fine_tune_type is one for all modules")
        }
        if let m = modules.first(where: { $0.rank != first.rank }) {
            throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has rank \(m.rank) but \(first.path) \(first.rank); mlx-lm's lora_parameters.rank is one for all modules")
        }
        // The most common scaling is the config's scale; ties go to the first module's.
        var counts: [Double: (n: Int, first: Int)] = [:]
        for (i, m) in modules.enumerated() { counts[m.scaling, default: (0, i)].n += 1 }
        let scale = counts.max { ($0.value.n, -$0.value.first) < ($1.value.n, -$1.value.first) }!.key
        guard scale != 0, scale.isFinite else {
            throw AdapterError.cannotWrite(path: path, reason: "scaling \(scale) cannot be mlx-lm's scale")
        }
        var folds: [Float] = []
        for m in modules {
            let ratio = m.scaling / scale
            guard ratio.isFinite, ratio != 0, ratio.significand == 1 else {
                throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has scaling \(JSONWriter.formatDouble(m.scaling)) but the adapter's scale is \(JSONWriter.formatDouble(scale)); mlx-lm holds one scale and the ratio \(JSONWriter.formatDouble(ratio)) is not a power of two, so folding it into lora_b would round")
            }
            folds.append(Float(ratio))
        }
        let (keys, numLayers) = try blockLayout(modules, base: options.base, dora: dora, output: path)
        let dtype = options.dtype ?? .f32

        var specs: [TensorSpec] = []
        var source: [String: (module: Int, part: Int)] = [:]
        for (i, m) in modules.enumerated() {
            specs.append(TensorSpec(name: m.path + ".lora_a", dtype: dtype, shape: [m.a.shape[1], m.a.shape[0]]))
            source[specs.last!.name] = (i, 0)
            specs.append(TensorSpec(name: m.path + ".lora_b", dtype: dtype, shape: [m.b.shape[1], m.b.shape[0]]))
            source[specs.last!.name] = (i, 1)
            if let mag = m.magnitude {
                specs.append(TensorSpec(name: m.path + ".m", dtype: dtype, shape: [mag.elementCount]))
                source[specs.last!.name] = (i, 2)
            }
        }
        let policy = OutputPolicy(overwrite: options.overwrite, inputs: options.inputs)
        try OutputGuard.check(path, kind: .directory, policy: policy)
        let dir = try OutputDirectory(path: path, policy: policy)
        let writer = try SafetensorsWriter(path: dir.path(weightsName), tensors: specs, metadata: ["format": "mlx"])
        let chunk = ChunkBuffer()
        for spec in writer.layout.order {
            guard let (i, part) = source[spec.name] else { continue }
            let m = modules[i]
            var values: [Float]
            switch part {
            case 0: values = try transposed(m.a).floats()
            case 1:
                values = try transposed(m.b).floats()
                if folds[i] != 1 {
                    let fold = folds[i]
                    values = values.map { $0 * fold }
                    // A power of two is exact unless a value leaves the normal range.
                    if let j = values.indices.first(where: { !values[$0].isFinite || (values[$0] != 0 && !values[$0].isNormal) }) {
                        throw AdapterError.cannotWrite(path: path, reason: "module \(m.path): folding its scaling ratio \(fold) into lora_b takes element \(j) out of f32's normal range (not exact)")
                    }
                }
            default: values = try m.magnitude?.floats() ?? []
            }
            try values.withUnsafeBytes { try chunk.write($0, from: .f32, to: dtype, count: values.count, into: writer) }
        }
        try writer.finish(sync: true)
        let config = mlxConfig(dora: dora, numLayers: numLayers, rank: first.rank, scale: scale, keys: keys,
                               model: options.base?.directory)
        let configFile = try OutputFile(path: dir.path(configName))
        try configFile.write(Array(JSONWriter.serialize(config, style: .python(indent: 4, sortKeys: true)).utf8))
        try configFile.commit(sync: true)
        try dir.commit()
        return [weightsName, configName]
    }

    /// A module path split at its block: model.layers.3.self_attn.q_proj ->
    /// ("model.layers.", 3, "self_attn.q_proj"); nil for modules outside the blocks (lm_head),
    /// which mlx-lm's keys name in full.
    static func block(of path: String) -> (prefix: String, index: Int, key: String)? {
        let parts = path.split(separator: ".", omittingEmptySubsequences: false)
        guard let i = parts.firstIndex(of: "layers"), i + 2 < parts.count, let n = Int(parts[i + 1]), n >= 0 else { return nil }
        return (parts[...i].joined(separator: ".") + ".", n, parts[(i + 2)...].joined(separator: "."))
    }

    /// mlx-lm's `keys` and `num_layers` for these modules. The block count comes from the base
    /// when given (its tensor names), else from the adapter's last block, with a warning.
    static func blockLayout(_ modules: [LoraModule], base: TensorStore?, dora: Bool, output: String) throws -> (keys: [String], numLayers: Int) {
        var keys: [String] = []
        for m in modules {
            let key = block(of: m.path)?.key ?? m.path
            if !keys.contains(key) { keys.append(key) }
        }
        let blocks = modules.compactMap { block(of: $0.path) }
        guard let lowest = blocks.map(\.index).min(), let highest = blocks.map(\.index).max() else { return (keys, 0) }
        var count = highest + 1
        if let base {
            let baseCount = base.entries.compactMap { block(of: $0.info.name)?.index }.max().map { $0 + 1 } ?? 0
            guard baseCount > highest else {
                throw AdapterError.cannotWrite(path: output, reason: "the adapter has modules in block \(highest) but the base \(base.directory) has \(baseCount) blocks")
            }
            count = baseCount
        } else if lowest > 0 {
            Warnings.emit("\(output): no --base: assuming the model has \(count) blocks (the adapter's last one); mlx-lm adapts the last num_layers blocks, so pass --base if the model has more")
        }
        let numLayers = count - lowest
        if dora {
            // mlx-lm makes every key of every adapted block a DoRA layer; one the adapter lacks
            // would get m = ‖W‖, which rescales W (not exactly the identity).
            let present = Set(modules.map(\.path))
            let prefixes = Set(blocks.map(\.prefix)), blockKeys = Set(blocks.map(\.key))
            for prefix in prefixes.sorted() {
                for n in lowest..<count {
                    for key in keys where blockKeys.contains(key) && !present.contains("\(prefix)\(n).\(key)") {
                        throw AdapterError.cannotWrite(path: output, reason: "DoRA module \(prefix)\(n).\(key) is missing; mlx-lm applies every key to the last \(numLayers) blocks and would add it with a recomputed magnitude")
                    }
                }
            }
        }
        return (keys, numLayers)
    }

    /// The adapter_config.json fields mlx_lm.load(model, adapter_path=...) reads.
    static func mlxConfig(dora: Bool, numLayers: Int, rank: Int, scale: Double, keys: [String], model: String?) -> JSONValue {
        func number(_ d: Double) -> JSONValue { .double(d) }
        let params: [(String, JSONValue)] = [
            ("rank", .int(Int64(rank))), ("scale", number(scale)), ("dropout", .double(0)),
            ("keys", .array(keys.map { .string($0) })),
        ]
        return .object([
            ("fine_tune_type", .string(dora ? "dora" : "lora")),
            ("lora_parameters", .object(params)),
            ("model", model.map { .string($0) } ?? .null),
            ("num_layers", .int(Int64(numLayers))),
        ])
    }
}
