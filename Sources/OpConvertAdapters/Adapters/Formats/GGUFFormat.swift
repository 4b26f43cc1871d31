import Foundation
import OpConvertCore
import OpConvertTensors

/// llama.cpp's GGUF LoRA adapters (what `llama-cli --lora` and ollama load; notes/formats.md
/// "GGUF LoRA adapters"): general.type = adapter, adapter.type = lora, adapter.lora.alpha,
/// tensors `<base gguf tensor>.lora_a` (ggml [in, r]) and `.lora_b` (ggml [r, out]). For the
/// llama architecture, lora_b rows of attn_q / attn_k are in llama.cpp's rotary order (the
/// permutation convert_hf_to_gguf applies to the base's q/k), which is undone on reading and
/// redone on writing with the base config.json's head counts.
public enum GGUFFormat: AdapterFormat {
    public static let id = AdapterFormatID.gguf
    public static let expected = "a GGUF LoRA adapter file (.gguf with general.type = adapter)"

    /// Any file starting with the GGUF magic: `open` says what is wrong with a model or a
    /// damaged file instead of "not an adapter".
    public static func probe(_ path: String) -> Bool { GGUFFile.hasMagic(path) }

    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        let file = try GGUFFile(path: path)
        let facts = try adapterFacts(file)
        let pairs = try loraPairs(file)
        let needsHeads = facts.architecture.permutesRotary && pairs.contains { isRotary($0.module) != nil }
        if needsHeads && options.base == nil {
            throw GGUFError.unsupported(path: path, reason: "its attn_q/attn_k LoRA rows are in llama.cpp's rotary order; undoing that needs the base model's head counts: give the base (merge BASE ADAPTER, or convert --base DIR)")
        }
        // A base that says what it is must be of the adapter's architecture (the row order
        // depends on it); one without a usable config.json is fine when no heads are needed.
        var rotaryHeads: (q: Int, k: Int)?
        if let base = options.base, let config = needsHeads ? try BaseFacts(base: base) : try? BaseFacts(base: base) {
            guard config.architecture.name == facts.architecture.name else {
                throw GGUFError.unsupported(path: path, reason: "the adapter is for architecture \(facts.architecture.name) but the base \(base.directory) is \(config.architecture.name)")
            }
            if needsHeads { rotaryHeads = (config.heads, config.kvHeads) }
        }
        var modules: [LoraModule] = []
        for p in pairs {
            guard let hf = GGUFNames.transformersName(ofModule: p.module) else {
                throw GGUFError.unsupported(path: path, reason: "tensor \(p.module).weight has no transformers name opconvert knows for architecture \(facts.architecture.name)")
            }
            if p.module == "token_embd" {
                throw GGUFError.unsupported(path: path, reason: "tensor token_embd.weight: embedding LoRA is not supported")
            }
            let r = p.a.dims[1]
            var b = try file.floats(p.b)
            let a = try file.floats(p.a)
            if let heads = rotaryHeads, let which = isRotary(p.module) {
                let n = which == .q ? heads.q : heads.k
                b = try RotaryOrder.llamaCppToTransformers(b, rows: p.b.dims[1], columns: r, heads: n, what: "\(path): tensor \(p.b.name)")
            }
            modules.append(LoraModule(path: hf, a: .memory(values: a, shape: [r, p.a.dims[0]]), b: .memory(values: b, shape: [p.b.dims[1], r]),
                                      rank: r, scaling: facts.alpha == 0 ? 1 : facts.alpha / Double(r)))
        }
        var details = facts.details
        details["modules"] = "\(modules.count)"
        return Adapter(path: path, kind: .ggufLora, modules: modules, naming: GGUFNames.naming, details: details)
    }

    /// Lists any GGUF file's metadata and tensors (quantized ones too), and an adapter's modules.
    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let file = try GGUFFile(path: path)
        var details: [String: String] = ["gguf.version": "\(file.version)", "gguf.alignment": "\(file.alignment)"]
        for (key, value) in file.metadata { details[key] = value.summary }
        var counts: [String: Int] = [:]
        for t in file.tensors { counts[t.type.name, default: 0] += 1 }
        details["gguf.tensor_types"] = counts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        let undecoded = file.tensors.filter { $0.type.dtype == nil }
        if !undecoded.isEmpty {
            details["gguf.quantized_tensors"] = "\(undecoded.count) (\(Set(undecoded.map(\.type.name)).sorted().joined(separator: ", "))), listed as U8 bytes; opconvert does not decode quantized types"
        }
        let tensors = file.tensors.map { t in
            TensorInfo(name: t.name, dtype: t.type.dtype ?? .u8, shape: t.type.dtype == nil ? [t.byteCount] : t.shape,
                       dataOffsets: (file.dataStart + t.offset)..<(file.dataStart + t.offset + t.byteCount))
        }
        let isAdapter = file.value("general.type")?.stringValue == "adapter"
        var modules: [AdapterSummary.Module] = []
        if isAdapter, let pairs = try? loraPairs(file) {
            modules = pairs.map {
                AdapterSummary.Module(name: GGUFNames.transformersName(ofModule: $0.module) ?? $0.module, rank: $0.a.dims[1],
                                      inferenceParameters: $0.a.elementCount + $0.b.elementCount)
            }
        }
        return AdapterSummary(kind: isAdapter ? "gguf-adapter" : "gguf-model", weightsFile: nil, tensors: tensors, details: details, modules: modules)
    }

    // MARK: writing

    public static let canWrite = true

    public static func checkOutput(_ path: String, policy: OutputPolicy) throws {
        try OutputGuard.check(path, kind: .ggufFile, policy: policy)
    }

    /// Writes a low-rank adapter for a LLaMA-family base as llama.cpp's convert_lora_to_gguf.py
    /// does: one alpha for the file (each module's scale is alpha / its rank), modules in name
    /// order, lora_a then lora_b, q/k lora_b rows in llama.cpp's rotary order.
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        guard let base = options.base else {
            throw AdapterError.cannotWrite(path: path, reason: "a GGUF adapter needs the base model (its config.json gives the architecture and head counts): give --base DIR")
        }
        let config = try BaseFacts(base: base)
        if !adapter.deltas.isEmpty || !adapter.replacements.isEmpty {
            throw AdapterError.cannotWrite(path: path, reason: "\(adapter.path) has full-tensor changes (\(adapter.deltas.count + adapter.replacements.count)); a GGUF LoRA adapter holds only lora_a/lora_b pairs")
        }
        for m in adapter.modules {
            if m.magnitude != nil { throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) is DoRA (has a magnitude); GGUF adapters are LoRA only") }
            if m.bias != nil { throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has a LoRA bias, which GGUF adapters cannot hold") }
            if m.isEmbedding { throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) is an embedding LoRA, which this conversion does not write") }
            if m.fanInFanOut { throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) is fan_in_fan_out (Conv1D), not a LLaMA-family linear layer") }
            guard m.a.shape.count == 2, m.b.shape.count == 2 else {
                throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) has lora_A \(m.a.shape) and lora_B \(m.b.shape); GGUF adapters hold matrices")
            }
        }
        let dtype = options.dtype ?? .f32
        let type: GGUFTensorType
        switch dtype {
        case .f32: type = .f32
        case .f16: type = .f16
        case .bf16: type = .bf16
        default: throw AdapterError.cannotWrite(path: path, reason: "--dtype \(dtype.rawValue.lowercased()): GGUF adapters are written as F32, F16 or BF16")
        }
        let alpha = try globalAlpha(adapter.modules, path: path)
        // Module -> base tensor through the adapter's own naming, then the base name's GGUF name.
        let resolver = adapter.naming.resolver(baseNames: base.entries.map(\.info.name))
        var named: [(module: LoraModule, gguf: String)] = []
        for m in adapter.modules {
            guard case let .found(baseName) = resolver.resolve(m.path + ".weight") else {
                throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) matches no single tensor of the base \(base.directory)")
            }
            guard let g = GGUFNames.ggufName(ofTensor: baseName), g.hasSuffix(".weight") else {
                throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) (base tensor \(baseName)) has no GGUF tensor name for architecture \(config.architecture.name)")
            }
            // llama.cpp refuses a pair whose shapes do not fit the model's tensor: say so now.
            if let w = base.entry(named: baseName), w.info.shape != [m.b.shape[0], m.a.shape[1]] {
                throw AdapterError.shapeMismatch(adapter: adapter.path, module: m.path, reason: "lora_B \(m.b.shape) · lora_A \(m.a.shape) does not fit the base tensor \(baseName) \(w.info.shape)")
            }
            if let layer = GGUFNames.layer(of: g), layer >= config.layers {
                throw AdapterError.cannotWrite(path: path, reason: "module \(m.path) is in layer \(layer) but the base has \(config.layers) layers")
            }
            named.append((m, g))
        }
        // The order convert_lora_to_gguf.py gives PEFT adapters: their file's name order.
        named.sort { Array($0.module.path.utf8).lexicographicallyPrecedes(Array($1.module.path.utf8)) }
        var specs: [GGUFTensorSpec] = []
        for (m, g) in named {
            specs.append(GGUFTensorSpec(name: g + ".lora_a", dims: [m.a.shape[1], m.a.shape[0]], type: type))
            specs.append(GGUFTensorSpec(name: g + ".lora_b", dims: [m.b.shape[1], m.b.shape[0]], type: type))
        }
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(config.architecture.name)),
            ("general.type", .string("adapter")),
            ("adapter.type", .string("lora")),
            ("adapter.lora.alpha", .f32(Float(alpha))),
            ("general.quantization_version", .u32(2)),
        ]
        try GGUFWriter.write(to: path, metadata: metadata, tensors: specs, policy: OutputPolicy(overwrite: options.overwrite, inputs: options.inputs)) { i in
            let (m, g) = named[i / 2]
            var values: [Float]
            if i % 2 == 0 {
                values = try m.a.floats()
            } else {
                values = try m.b.floats()
                if config.architecture.permutesRotary, let which = isRotary(String(g.dropLast(".weight".count))) {
                    values = try RotaryOrder.transformersToLlamaCpp(values, rows: m.b.shape[0], columns: m.b.shape[1],
                                                                   heads: which == .q ? config.heads : config.kvHeads, what: "module \(m.path)")
                }
            }
            return encode(values, as: dtype)
        }
        return [FileSystem.split(path).name]
    }

    /// The one alpha whose alpha / r gives every module's scaling; 0 (llama.cpp: scale 1)
    /// when every scaling is 1 but the ranks differ.
    package static func globalAlpha(_ modules: [LoraModule], path: String) throws -> Double {
        guard let first = modules.first else { return 0 }
        let alphas = modules.map { Float($0.scaling * Double($0.rank)) }
        if alphas.allSatisfy({ $0 == alphas[0] }) {
            guard alphas[0] != 0 else {
                throw AdapterError.cannotWrite(path: path, reason: "module \(first.path) has scaling 0, which GGUF cannot express (alpha 0 means scale 1 in llama.cpp)")
            }
            return Double(alphas[0])
        }
        if modules.allSatisfy({ $0.scaling == 1 }) { return 0 }
        let i = alphas.firstIndex { $0 != alphas[0] }!
        throw AdapterError.cannotWrite(path: path, reason: "GGUF adapters have one alpha (scale = alpha / rank), but module \(first.path) has scaling \(first.scaling) at rank \(first.rank) and \(modules[i].path) has \(modules[i].scaling) at rank \(modules[i].rank) (alpha \(alphas[0]) vs \(alphas[i]))")
    }

    static func encode(_ values: [Float], as dtype: DType) -> [UInt8] {
        let width = dtype.byteWidth ?? 4
        var out = [UInt8](repeating: 0, count: values.count * width)
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes { dst in
                if let s = src.baseAddress, let d = dst.baseAddress, !values.isEmpty {
                    DTypeConversion.encode(s, to: d, dtype, count: values.count)
                }
            }
        }
        return out
    }

    // MARK: reading helpers

    enum Rotary { case q, k }

    /// attn_q / attn_k modules of any layer.
    static func isRotary(_ module: String) -> Rotary? {
        if module.hasSuffix(".attn_q") { return .q }
        if module.hasSuffix(".attn_k") { return .k }
        return nil
    }

    struct Facts {
        var architecture: GGUFArchitecture
        var alpha: Double
        var details: [String: String]
    }

    static func adapterFacts(_ file: GGUFFile) throws -> Facts {
        let path = file.path
        guard let type = file.value("general.type") else {
            throw GGUFError.unsupported(path: path, reason: "a GGUF model, not an adapter (no general.type = adapter)")
        }
        guard type.stringValue == "adapter" else {
            throw GGUFError.unsupported(path: path, reason: "a GGUF model, not an adapter (general.type = \(type.summary))")
        }
        guard let adapterType = file.value("adapter.type")?.stringValue else {
            throw GGUFError.malformed(path: path, reason: "adapter.type is missing or not a string")
        }
        guard adapterType == "lora" else {
            throw GGUFError.unsupported(path: path, reason: "adapter.type is \(adapterType); opconvert reads lora adapters")
        }
        guard let archName = file.value("general.architecture")?.stringValue else {
            throw GGUFError.malformed(path: path, reason: "general.architecture is missing or not a string")
        }
        guard let arch = GGUFArchitecture.named(archName) else {
            throw GGUFError.unsupported(path: path, reason: "general.architecture \(archName); opconvert maps tensor names for \(GGUFArchitecture.all.map(\.name).joined(separator: ", "))")
        }
        // llama.cpp reads a missing alpha as 0, which means scale 1.
        var alpha = 0.0
        if let a = file.value("adapter.lora.alpha") {
            guard let v = a.doubleValue, v.isFinite else {
                throw GGUFError.malformed(path: path, reason: "adapter.lora.alpha is \(a.summary) (\(a.type.name)), expected a finite number")
            }
            alpha = v
        }
        return Facts(architecture: arch, alpha: alpha, details: [
            "architecture": archName, "lora_alpha": "\(alpha)", "gguf.version": "\(file.version)",
            "scaling": alpha == 0 ? "1 (alpha 0)" : "alpha / rank",
        ])
    }

    struct Pair {
        var module: String
        var a: GGUFTensorInfo
        var b: GGUFTensorInfo
    }

    /// lora_a/lora_b pairs in file order, shapes checked against each other.
    static func loraPairs(_ file: GGUFFile) throws -> [Pair] {
        let path = file.path
        var a: [String: GGUFTensorInfo] = [:], b: [String: GGUFTensorInfo] = [:]
        var order: [String] = []
        for t in file.tensors {
            let base: String, isA: Bool
            if t.name.hasSuffix(".weight.lora_a") { base = String(t.name.dropLast(".weight.lora_a".count)); isA = true }
            else if t.name.hasSuffix(".weight.lora_b") { base = String(t.name.dropLast(".weight.lora_b".count)); isA = false }
            else {
                throw GGUFError.unsupported(path: path, reason: "tensor \(t.name) is not a <tensor>.weight.lora_a / .lora_b factor; opconvert reads only LoRA pairs")
            }
            if a[base] == nil && b[base] == nil { order.append(base) }
            if isA { a[base] = t } else { b[base] = t }
        }
        return try order.map { m in
            guard let ta = a[m] else { throw GGUFError.malformed(path: path, reason: "tensor \(m).weight.lora_b has no \(m).weight.lora_a") }
            guard let tb = b[m] else { throw GGUFError.malformed(path: path, reason: "tensor \(m).weight.lora_a has no \(m).weight.lora_b") }
            guard ta.dims.count == 2, tb.dims.count == 2 else {
                throw GGUFError.malformed(path: path, reason: "tensors \(ta.name) \(ta.dims) and \(tb.name) \(tb.dims) must be 2-dimensional (ggml [in, r] and [r, out])")
            }
            guard ta.dims[1] == tb.dims[0], ta.dims[1] > 0 else {
                throw GGUFError.malformed(path: path, reason: "\(ta.name) has ggml shape \(ta.dims) and \(tb.name) \(tb.dims): their ranks (ne[1] of lora_a, ne[0] of lora_b) differ or are 0")
            }
            return Pair(module: m, a: ta, b: tb)
        }
    }

    /// What the base's config.json says: architecture, head counts, layers.
    struct BaseFacts {
        var architecture: GGUFArchitecture
        var heads: Int
        var kvHeads: Int
        var layers: Int

        init(base: TensorStore) throws {
            let configPath = FileSystem.join(base.directory, "config.json")
            guard FileSystem.isRegularFile(configPath) else {
                throw AdapterError.invalidConfig(path: base.directory, reason: "the base has no config.json, which gives GGUF adapters the architecture and head counts")
            }
            let config: JSONValue
            do { config = try JSONParser.parse(try FileSystem.readAll(configPath)) } catch {
                throw AdapterError.invalidConfig(path: configPath, reason: "\(error)")
            }
            let archName = config["architectures"]?.arrayValue?.first?.stringValue
            let modelType = config["model_type"]?.stringValue
            guard let arch = GGUFArchitecture.forTransformers(architecture: archName, modelType: modelType) else {
                throw AdapterError.unsupported(path: configPath, reason: "architecture \(archName ?? modelType ?? "(none)") has no GGUF adapter mapping in opconvert (\(GGUFArchitecture.transformersNames.joined(separator: ", ")))")
            }
            guard let heads = config["num_attention_heads"]?.intValue, heads > 0 else {
                throw AdapterError.invalidConfig(path: configPath, reason: "num_attention_heads is missing or not a positive integer")
            }
            let kv = config["num_key_value_heads"]?.intValue ?? heads
            guard kv > 0 else { throw AdapterError.invalidConfig(path: configPath, reason: "num_key_value_heads is \(kv), expected a positive integer") }
            guard let layers = config["num_hidden_layers"]?.intValue, layers > 0 else {
                throw AdapterError.invalidConfig(path: configPath, reason: "num_hidden_layers is missing or not a positive integer")
            }
            self.architecture = arch
            self.heads = heads
            self.kvHeads = kv
            self.layers = layers
        }
    }
}

/// A GGUF architecture opconvert maps names for.
struct GGUFArchitecture: Sendable {
    /// general.architecture.
    var name: String
    /// llama.cpp stores attn_q/attn_k rows in its rotary order (LLaMA's converter permutes them;
    /// NeoX-style models such as qwen2 keep transformers' order).
    var permutesRotary: Bool
    /// transformers architectures / model_type values that convert to it.
    var transformers: [String]
    var modelTypes: [String]

    static let all: [GGUFArchitecture] = [
        GGUFArchitecture(name: "llama", permutesRotary: true, transformers: ["LlamaForCausalLM", "MistralForCausalLM"], modelTypes: ["llama", "mistral"]),
        GGUFArchitecture(name: "qwen2", permutesRotary: false, transformers: ["Qwen2ForCausalLM"], modelTypes: ["qwen2"]),
    ]

    static func named(_ name: String) -> GGUFArchitecture? { all.first { $0.name == name } }

    static func forTransformers(architecture: String?, modelType: String?) -> GGUFArchitecture? {
        if let a = architecture { return all.first { $0.transformers.contains(a) } }
        if let t = modelType { return all.first { $0.modelTypes.contains(t) } }
        return nil
    }

    static var transformersNames: [String] { all.flatMap(\.transformers) }
}

/// transformers <-> GGUF tensor names of the LLaMA family (the gguf package's tensor name map
/// for these architectures: `model.layers.N.self_attn.q_proj` <-> `blk.N.attn_q`, ...).
package enum GGUFNames {
    static let layerParts: [(transformers: String, gguf: String)] = [
        ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
    ]
    static let topLevel: [(transformers: String, gguf: String)] = [
        ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output"),
    ]

    /// Module names resolve through the base's own names: a base tensor's spelling is the
    /// transformers name its GGUF name maps back to (so any spelling of the same tensor meets).
    static let naming = TableModuleNaming { name in
        guard let g = ggufName(ofTensor: name), let dot = g.lastIndex(of: ".") else { return nil }
        return transformersName(ofModule: String(g[..<dot])).map { $0 + g[dot...] }
    }

    /// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight".
    package static func ggufName(ofTensor name: String) -> String? {
        for suffix in [".weight", ".bias"] where name.hasSuffix(suffix) {
            return ggufName(ofModule: String(name.dropLast(suffix.count))).map { $0 + suffix }
        }
        return nil
    }

    static func ggufName(ofModule module: String) -> String? {
        if let hit = topLevel.first(where: { $0.transformers == module }) { return hit.gguf }
        let prefix = "model.layers."
        guard module.hasPrefix(prefix) else { return nil }
        let rest = module.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0, String(layer) == rest[..<dot] else { return nil }
        let part = String(rest[rest.index(after: dot)...])
        return layerParts.first { $0.transformers == part }.map { "blk.\(layer).\($0.gguf)" }
    }

    /// "blk.3.attn_q" -> "model.layers.3.self_attn.q_proj".
    package static func transformersName(ofModule module: String) -> String? {
        if let hit = topLevel.first(where: { $0.gguf == module }) { return hit.transformers }
        let parts = module.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0, String(layer) == parts[1] else { return nil }
        return layerParts.first { $0.gguf == parts[2] }.map { "model.layers.\(layer).\($0.transformers)" }
    }

    /// The layer of "blk.N.…".
    static func layer(of gguf: String) -> Int? {
        let parts = gguf.split(separator: ".")
        guard parts.count >= 2, parts[0] == "blk" else { return nil }
        return Int(parts[1])
    }
}

/// llama.cpp's row order of LLaMA's q and k projections: within each head of d rows, the two
/// rotary halves are interleaved, so llama.cpp row h·d + 2j + t holds transformers row
/// h·d + t·d/2 + j (t = 0, 1; j < d/2). Moves whole rows of `columns` values.
package enum RotaryOrder {
    package static func transformersToLlamaCpp(_ m: [Float], rows: Int, columns: Int, heads: Int, what: String) throws -> [Float] {
        try permute(m, rows: rows, columns: columns, heads: heads, what: what, toLlamaCpp: true)
    }

    package static func llamaCppToTransformers(_ m: [Float], rows: Int, columns: Int, heads: Int, what: String) throws -> [Float] {
        try permute(m, rows: rows, columns: columns, heads: heads, what: what, toLlamaCpp: false)
    }

    private static func permute(_ m: [Float], rows: Int, columns: Int, heads: Int, what: String, toLlamaCpp: Bool) throws -> [Float] {
        guard heads > 0, rows % (2 * heads) == 0, m.count == rows * columns else {
            throw GGUFError.malformed(path: what, reason: "\(rows) rows cannot be split into \(heads) heads of an even size (the base config's head counts do not fit this tensor)")
        }
        let d = rows / heads, half = d / 2
        var out = [Float](repeating: 0, count: m.count)
        for h in 0..<heads {
            for j in 0..<half {
                for t in 0..<2 {
                    let llama = h * d + 2 * j + t, hf = h * d + t * half + j
                    let (src, dst) = toLlamaCpp ? (hf, llama) : (llama, hf)
                    for c in 0..<columns { out[dst * columns + c] = m[src * columns + c] }
                }
            }
        }
        return out
    }
}
