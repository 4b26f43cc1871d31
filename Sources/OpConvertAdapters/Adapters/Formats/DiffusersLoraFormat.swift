import OpConvertCore
import OpConvertTensors

/// diffusers LoRA files (`pytorch_lora_weights.safetensors`, or a directory holding it), as
/// `save_lora_weights` writes them (facts: notes/sd-formats.md):
/// - PEFT style: `<component>.<module path>.lora_A.weight` / `.lora_B.weight` (and
///   `.lora_magnitude_vector` for DoRA), components `unet`, `text_encoder`,
///   `text_encoder_2`, `transformer`. Scale alpha/r: alpha from `<module>.alpha` keys, else
///   from the header metadata `lora_adapter_metadata` (a JSON object of `<component>.<LoraConfig
///   field>` entries: r, lora_alpha, rank_pattern, alpha_pattern), else scale 1.
/// - The older attention-processor styles: `...attn1.processor.to_q_lora.down.weight`
///   (`to_out_lora` is `to_out.0`), `....lora_linear_layer.down/up.weight`, `....lora.down/up.weight`.
/// Module paths keep their component prefix (`unet.down_blocks.0...to_q`) and resolve through
/// `SDModuleNames.diffusersNaming`: `<component>/<path>.weight` in a pipeline directory, the
/// LDM/SGM names in a single-file checkpoint.
public enum DiffusersLoraFormat: AdapterFormat {
    public static let id = AdapterFormatID.diffusers
    public static let expected = "a diffusers LoRA (pytorch_lora_weights.safetensors, or a directory holding it)"
    package static let weightsName = "pytorch_lora_weights.safetensors"
    package static let metadataKey = "lora_adapter_metadata"
    /// Longest first, so `text_encoder_2.` is not read as `text_encoder.`.
    package static let components = ["text_encoder_2", "text_encoder", "transformer", "unet"]

    /// A directory holding pytorch_lora_weights.safetensors, or a .safetensors file with
    /// component-prefixed LoRA keys.
    public static func probe(_ path: String) -> Bool {
        if FileSystem.isDirectory(path) { return FileSystem.isRegularFile(FileSystem.join(path, weightsName)) }
        guard path.hasSuffix(".safetensors"), FileSystem.isRegularFile(path), let file = try? SafetensorsFile(path: path) else { return false }
        return file.tensors.contains { split($0.name) != nil }
    }

    /// The weights file of a path `probe` accepted.
    static func weightsFile(_ path: String) -> String {
        FileSystem.isDirectory(path) ? FileSystem.join(path, weightsName) : path
    }

    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        try read(path)
    }

    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        AdapterSummary.of(try read(path), kind: "diffusers-lora", weightsFile: weightsFile(path))
    }

    // MARK: - Reading

    /// What a key holds.
    package enum Part: Equatable { case a, b, bias, magnitude, alpha }

    /// Key -> (module path with its component prefix, part), or nil for a key that is not a
    /// diffusers LoRA key.
    package static func split(_ key: String) -> (module: String, part: Part)? {
        guard components.contains(where: { key.hasPrefix($0 + ".") }) else { return nil }
        let suffixes: [(String, Part)] = [
            (".lora_A.weight", .a), (".lora_B.weight", .b), (".lora_B.bias", .bias),
            (".lora_magnitude_vector", .magnitude), (".lora_magnitude_vector.weight", .magnitude),
            (".lora_linear_layer.down.weight", .a), (".lora_linear_layer.up.weight", .b),
            (".lora.down.weight", .a), (".lora.up.weight", .b), (".alpha", .alpha),
        ]
        for (suffix, part) in suffixes where key.hasSuffix(suffix) {
            let module = String(key.dropLast(suffix.count))
            // `.alpha` alone is too common a word to claim a key: it needs a module before it.
            guard !module.isEmpty else { return nil }
            return (module, part)
        }
        // Attention processors: `<attention>.processor.<proj>_lora.down.weight`.
        for (suffix, part) in [("_lora.down.weight", Part.a), ("_lora.up.weight", .b)] where key.hasSuffix(suffix) {
            guard let range = key.range(of: ".processor.", options: .backwards) else { return nil }
            let attention = key[..<range.lowerBound]
            let projection = String(key[range.upperBound...].dropLast(suffix.count))
            guard !projection.isEmpty, !projection.contains(".") else { return nil }
            return (String(attention) + "." + (projection == "to_out" ? "to_out.0" : projection), part)
        }
        return nil
    }

    package static func read(_ path: String) throws -> Adapter {
        if FileSystem.isDirectory(path), !FileSystem.isRegularFile(FileSystem.join(path, weightsName)) {
            throw AdapterError.invalidConfig(path: path, reason: "no \(weightsName)")
        }
        let file = weightsFile(path)
        let store = try TensorStore.open(file)
        struct Parts { var a, b, bias, magnitude, alpha: TensorData? }
        var parts: [String: Parts] = [:]
        var order: [String] = []
        var leftovers: [String] = []
        for e in store.entries {
            guard let (module, part) = split(e.info.name) else { leftovers.append(e.info.name); continue }
            if parts[module] == nil { parts[module] = Parts(); order.append(module) }
            let data = TensorData.stored(store, e)
            let slot: WritableKeyPath<Parts, TensorData?>
            switch part {
            case .a: slot = \.a
            case .b: slot = \.b
            case .bias: slot = \.bias
            case .magnitude: slot = \.magnitude
            case .alpha: slot = \.alpha
            }
            if parts[module]![keyPath: slot] != nil {
                throw AdapterError.invalidTensors(path: file, module: module, reason: "holds \(e.info.name) and another key for the same tensor (two spellings of one LoRA)")
            }
            parts[module]![keyPath: slot] = data
        }
        if !leftovers.isEmpty {
            throw AdapterError.invalidTensors(path: file, module: "(file)", reason: "\(leftovers.count) key\(leftovers.count == 1 ? " is" : "s are") not diffusers LoRA keys (<component>.<module>.lora_A/lora_B.weight, ...): \(KohyaFormat.listed(leftovers))")
        }
        let configs = try componentConfigs(store.metadata?[metadataKey], file: file)
        var modules: [LoraModule] = []
        for m in order {
            let p = parts[m]!
            guard let a = p.a, let b = p.b else {
                let has = [p.a == nil ? nil : "lora_A", p.b == nil ? nil : "lora_B", p.alpha == nil ? nil : "alpha", p.magnitude == nil ? nil : "lora_magnitude_vector"].compactMap { $0 }
                throw AdapterError.invalidTensors(path: file, module: m, reason: "has \(has.joined(separator: ", ")) but no \(p.a == nil ? "lora_A (down)" : "lora_B (up)")")
            }
            for t in [a, b] + [p.bias, p.magnitude, p.alpha].compactMap({ $0 }) where !t.dtype.isDecodableFloat {
                throw AdapterError.invalidTensors(path: file, module: m, reason: "\(t.origin) has dtype \(t.dtype.rawValue), expected a float type")
            }
            let rank = a.shape.first ?? 0
            guard a.shape.count == 2 || a.shape.count == 4, rank > 0 else {
                throw AdapterError.invalidTensors(path: file, module: m, reason: "lora_A has shape \(a.shape); expected [r, in] or [r, in, kh, kw]")
            }
            guard b.shape.count == 2 || (b.shape.count == 4 && b.shape[2] == 1 && b.shape[3] == 1), b.shape[1] == rank else {
                throw AdapterError.invalidTensors(path: file, module: m, reason: "lora_B has shape \(b.shape); expected [out, \(rank)] or [out, \(rank), 1, 1] for lora_A \(a.shape)")
            }
            var scaling = 1.0
            if let alpha = p.alpha {
                guard alpha.elementCount == 1 else { throw AdapterError.invalidTensors(path: file, module: m, reason: "alpha has shape \(alpha.shape); expected a scalar") }
                let v = Double(try alpha.floats()[0])
                guard v.isFinite else { throw AdapterError.invalidTensors(path: file, module: m, reason: "alpha is \(v)") }
                scaling = v / Double(rank)
            } else if let (component, config) = configs.first(where: { m.hasPrefix($0.component + ".") }).map({ ($0.component, $0.config) }) {
                let inner = patternName(String(m.dropFirst(component.count + 1)), config: config)
                let r = config.rank(for: inner)
                guard r == rank else {
                    throw AdapterError.invalidTensors(path: file, module: m, reason: "\(metadataKey) gives \(component) rank \(r) for it but lora_A has shape \(a.shape)")
                }
                scaling = config.scaling(for: inner)
            }
            if let mag = p.magnitude, mag.elementCount != b.shape[0] {
                throw AdapterError.invalidTensors(path: file, module: m, reason: "lora_magnitude_vector has \(mag.elementCount) elements, expected \(b.shape[0])")
            }
            modules.append(LoraModule(path: m, a: a, b: b, bias: p.bias, magnitude: p.magnitude, rank: rank, scaling: scaling))
        }
        if modules.isEmpty {
            throw AdapterError.invalidTensors(path: file, module: "(file)", reason: "no LoRA modules (no lora_A/lora_B pairs)")
        }
        var details: [String: String] = ["keys": String(store.tensorCount), "modules": String(modules.count)]
        for c in components {
            let n = modules.filter { $0.path.hasPrefix(c + ".") }.count
            if n > 0 { details[c] = String(n) }
        }
        let ranks = Set(modules.map(\.rank)).sorted()
        if let lo = ranks.first, let hi = ranks.last { details["rank"] = lo == hi ? String(lo) : "\(lo)-\(hi)" }
        details["alphas_from"] = parts.values.contains { $0.alpha != nil } ? "alpha keys" : (configs.isEmpty ? "none (scale 1)" : metadataKey)
        let dora = modules.contains { $0.magnitude != nil }
        if dora { details["dora"] = "true" }
        return Adapter(path: path, kind: dora ? .diffusersDora : .diffusersLora, modules: modules, naming: SDModuleNames.diffusersNaming, details: details)
    }

    /// The name a component's rank_pattern/alpha_pattern keys are matched against: the path
    /// inside the component, or for a text encoder the path inside its `text_model` when only
    /// that one matches a key (diffusers saves CLIP text-encoder patterns anchored there,
    /// `^encoder\.layers\.0\...$`, while the keys spell `text_model.encoder.layers.0...`).
    static func patternName(_ inner: String, config: LoraConfig) -> String {
        let keys = config.rankPattern.map(\.0) + config.alphaPattern.map(\.0)
        guard inner.hasPrefix("text_model."), !keys.contains(where: { PatternMatch.matches(key: $0, module: inner) }) else { return inner }
        let stripped = String(inner.dropFirst("text_model.".count))
        return keys.contains(where: { PatternMatch.matches(key: $0, module: stripped) }) ? stripped : inner
    }

    /// `lora_adapter_metadata`: one LoraConfig per component, from its `<component>.<field>` entries.
    static func componentConfigs(_ text: String?, file: String) throws -> [(component: String, config: LoraConfig)] {
        guard let text else { return [] }
        let json: JSONValue
        do { json = try JSONParser.parse(Array(text.utf8)) } catch {
            throw AdapterError.invalidConfig(path: file, reason: "header metadata \(metadataKey) is not valid JSON: \(error.message)")
        }
        guard let fields = json.objectValue else {
            throw AdapterError.invalidConfig(path: file, reason: "header metadata \(metadataKey) is not a JSON object")
        }
        var configs: [(String, LoraConfig)] = []
        for c in components {
            let own = fields.compactMap { (k, v) in k.hasPrefix(c + ".") ? (String(k.dropFirst(c.count + 1)), v) : nil }
            // text_encoder_2.r also starts with "text_encoder" but not "text_encoder.": no overlap.
            guard !own.isEmpty else { continue }
            var object = own
            if !object.contains(where: { $0.0 == "peft_type" }) { object.append(("peft_type", .string("LORA"))) }
            configs.append((c, try LoraConfig(json: .object(object), path: "\(file) (\(metadataKey), \(c))")))
        }
        return configs
    }

    // MARK: - Writing

    public static let canWrite = true

    /// OUTPUT.safetensors is the file itself; any other name is a directory holding
    /// pytorch_lora_weights.safetensors (what `load_lora_weights(dir)` reads).
    public static func checkOutput(_ path: String, policy: OutputPolicy) throws {
        try OutputGuard.check(path, kind: path.hasSuffix(".safetensors") ? .safetensorsFile : .directory, policy: policy)
    }

    /// Writes low-rank modules in PEFT style with component prefixes and the per-component
    /// LoraConfig in `lora_adapter_metadata` (alpha = scaling·r, rank_pattern/alpha_pattern
    /// for modules off the most common (r, alpha)). Module paths come from the base through
    /// the adapter's own naming (`--base` is needed unless the adapter already has diffusers
    /// paths). Factors keep their dtype unless --dtype says otherwise, so kohya -> diffusers
    /// -> kohya gives the same bits back.
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        try SDLoraWriting.refuseNonLowRank(adapter, output: path, format: "a diffusers LoRA")
        let paths = try SDLoraWriting.respell(adapter, output: path, base: options.base, format: "diffusers",
                                              keep: adapter.kind == .diffusersLora || adapter.kind == .diffusersDora) { $0.diffusers }
        var tensors: [SDLoraWriting.Tensor] = []
        for (m, name) in zip(adapter.modules, paths) {
            let dtype = try SDLoraWriting.dtype(options.dtype, m.a, output: path)
            tensors.append(.init(name: name + ".lora_A.weight", data: m.a, shape: m.a.shape, dtype: dtype))
            tensors.append(.init(name: name + ".lora_B.weight", data: m.b, shape: m.b.shape, dtype: dtype))
            if let mag = m.magnitude {
                // PEFT's shapes: [out] for a linear, [1, out, 1, 1] for a conv (the same per-output norm).
                let shape = m.a.shape.count == 4 ? [1, mag.elementCount, 1, 1] : [mag.elementCount]
                tensors.append(.init(name: name + ".lora_magnitude_vector", data: mag, shape: shape, dtype: dtype))
            }
        }
        var metadata = ["format": "pt"]
        metadata[metadataKey] = JSONWriter.serialize(try metadataConfig(adapter.modules, paths: paths, output: path), style: .python(indent: 2, sortKeys: true))
        if path.hasSuffix(".safetensors") {
            try SDLoraWriting.writeFile(path, tensors: tensors, metadata: metadata, policy: OutputPolicy(overwrite: options.overwrite, inputs: options.inputs))
            return [FileSystem.split(path).name]
        }
        let policy = OutputPolicy(overwrite: options.overwrite, inputs: options.inputs)
        try OutputGuard.check(path, kind: .directory, policy: policy)
        let dir = try OutputDirectory(path: path, policy: policy)
        try SDLoraWriting.writeFile(dir.path(weightsName), tensors: tensors, metadata: metadata, policy: nil)
        try dir.commit()
        return [weightsName]
    }

    /// `<component>.<field>` entries of each component's LoraConfig (PEFTFormat's config
    /// rules: the most common (r, alpha) as defaults, patterns for the rest).
    static func metadataConfig(_ modules: [LoraModule], paths: [String], output: String) throws -> JSONValue {
        var fields: [(String, JSONValue)] = []
        for c in components.sorted() {
            var own: [LoraModule] = []
            for (m, p) in zip(modules, paths) where p.hasPrefix(c + ".") {
                var inner = m
                inner.path = String(p.dropFirst(c.count + 1))
                // Text encoders' pattern keys without `text_model.`: PEFT's (.*\.)?key$ then
                // matches whether the names it sees start inside text_model or above it.
                if c.hasPrefix("text_encoder"), inner.path.hasPrefix("text_model.") { inner.path = String(inner.path.dropFirst("text_model.".count)) }
                own.append(inner)
            }
            guard !own.isEmpty else { continue }
            let sub = Adapter(path: output, kind: .diffusersLora, modules: own)
            guard case let .object(config) = PEFTFormat.peftConfig(for: sub, baseModel: nil) else { continue }
            // A UNet or text encoder has no causal-LM task; the rest is PEFT's LoraConfig.
            for (k, v) in config where k != "task_type" && k != "base_model_name_or_path" {
                fields.append(("\(c).\(k)", v))
            }
        }
        return .object(fields)
    }
}

/// What the kohya and diffusers writers share: module names re-spelled through the base,
/// refusals, and one safetensors file of factors.
package enum SDLoraWriting {
    package struct Tensor {
        var name: String
        var data: TensorData
        var shape: [Int]
        var dtype: DType
    }

    /// Full deltas (LoHa, LoKr, Tucker LoCon, diff) and LoRA biases have no low-rank form here.
    static func refuseNonLowRank(_ adapter: Adapter, output: String, format: String) throws {
        if !adapter.deltas.isEmpty || !adapter.replacements.isEmpty {
            let names = (adapter.deltas.map(\.name) + adapter.replacements.map(\.name)).prefix(3).joined(separator: ", ")
            throw AdapterError.cannotWrite(path: output, reason: "\(adapter.path) has \(adapter.deltas.count + adapter.replacements.count) full-delta modules (LoHa, LoKr, Tucker lora_mid or diff: \(names)\(adapter.deltas.count + adapter.replacements.count > 3 ? ", ..." : "")); writing them as \(format) needs a low-rank factorization: give --rank R or --energy F")
        }
        if let m = adapter.modules.first(where: { $0.bias != nil || $0.isEmbedding || $0.fanInFanOut }) {
            throw AdapterError.cannotWrite(path: output, reason: "module \(m.path) has \(m.bias != nil ? "a LoRA bias" : m.isEmbedding ? "an embedding LoRA" : "a fan_in_fan_out layout"), which \(format) does not hold")
        }
    }

    /// The factors' storage dtype: --dtype, else the factor's own float dtype.
    static func dtype(_ requested: DType?, _ t: TensorData, output: String) throws -> DType {
        if let requested {
            guard [.f32, .f16, .bf16].contains(requested) else {
                throw AdapterError.cannotWrite(path: output, reason: "--dtype \(requested.rawValue.lowercased()): LoRA factors are written as F32, F16 or BF16")
            }
            return requested
        }
        return [.f32, .f16, .bf16].contains(t.dtype) ? t.dtype : .f32
    }

    /// Each module's name in the target format: kept when `keep` (the adapter already uses
    /// that format's names), else found through the base: the module's base tensor (and row
    /// part) by the adapter's own naming, then the names `table` gives that tensor, one picked
    /// by `choose` (given them sorted).
    static func respell(_ adapter: Adapter, output: String, base: TensorStore?, format: String, keep: Bool,
                        table: (SDModuleNames) -> [String: [SDModuleNames.Target]],
                        choose: ([String], SDModuleNames) -> String? = { names, _ in names.first }) throws -> [String] {
        if keep { return adapter.modules.map(\.path) }
        guard let base else {
            throw AdapterError.cannotWrite(path: output, reason: "\(adapter.path): its module names become \(format) names only through the base model: give --base (the pipeline directory or single-file checkpoint it was trained for)")
        }
        let baseNames = base.entries.map(\.info.name)
        let resolver = adapter.naming.resolver(baseNames: baseNames)
        let sd = SDModuleNames(baseNames: baseNames)
        var reverse: [ModuleTarget: [String]] = [:]
        for (name, targets) in table(sd) {
            for t in targets { reverse[ModuleTarget(tensor: t.weight, part: t.part), default: []].append(name) }
        }
        var out: [String] = []
        var seen: [String: String] = [:]
        for m in adapter.modules {
            guard case let .found(tensor) = resolver.resolve(m.path + ".weight") else {
                throw AdapterError.cannotWrite(path: output, reason: "module \(m.path) matches no single tensor of the base \(base.directory)")
            }
            let target = ModuleTarget(tensor: tensor, part: resolver.rowPart(m.path + ".weight"))
            guard let name = choose(Array(Set(reverse[target] ?? [])).sorted(), sd) else {
                throw AdapterError.cannotWrite(path: output, reason: "module \(m.path) (base tensor \(tensor)) has no \(format) name")
            }
            if let other = seen[name] {
                throw AdapterError.cannotWrite(path: output, reason: "modules \(other) and \(m.path) both change \(tensor); \(format) files hold one LoRA per module")
            }
            seen[name] = m.path
            out.append(name)
        }
        return out
    }

    /// One safetensors file of the factors (in name order, each decoded and re-encoded once).
    static func writeFile(_ path: String, tensors: [Tensor], metadata: [String: String], policy: OutputPolicy?) throws {
        let specs = tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        var byName: [String: Tensor] = [:]
        for t in tensors { byName[t.name] = t }
        let writer = try SafetensorsWriter(path: path, tensors: specs, metadata: metadata, policy: policy)
        let chunk = ChunkBuffer()
        for spec in writer.layout.order {
            guard let t = byName[spec.name] else { continue }
            let values = try t.data.floats()
            try values.withUnsafeBytes { try chunk.write($0, from: .f32, to: spec.dtype, count: values.count, into: writer) }
        }
        try writer.finish(sync: true)
    }
}
