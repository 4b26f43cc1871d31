import OpConvertCore
import OpConvertTensors

/// kohya/A1111 LoRA and LoCon files (sd-scripts, OneTrainer, ...): one .safetensors whose
/// keys are `<module>.<suffix>`, the module a kohya name (`lora_unet_...`, `lora_te_...`,
/// `lora_te1_`/`lora_te2_`, `lora_transformer_...`: a base path with dots made underscores)
/// and the suffix `lora_down.weight` (A), `lora_up.weight` (B), `alpha`, `dora_scale`.
/// Names resolve forward from the base's own names (`SDModuleNames`). Each module's keys go
/// to the first family (`families`) whose marker suffix it has; every key must be used:
/// leftovers are one error listing them.
public enum KohyaFormat: AdapterFormat {
    public static let id = AdapterFormatID.kohya
    public static let expected = "a kohya/A1111 LoRA file (.safetensors with lora_unet_/lora_te_ keys)"

    public static func probe(_ path: String) -> Bool {
        guard path.hasSuffix(".safetensors"), FileSystem.isRegularFile(path), let file = try? SafetensorsFile(path: path) else { return false }
        return file.tensors.contains { isKohyaKey($0.name) }
    }

    static func isKohyaKey(_ key: String) -> Bool {
        SDModuleNames.kohyaPrefixes.contains { key.hasPrefix($0) }
    }

    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        try read(path).adapter
    }

    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let adapter = try read(path).adapter
        var summary = AdapterSummary.of(adapter, kind: "kohya-adapter", weightsFile: path)
        // Full-delta modules (LyCORIS families) have no factors to count; list them too.
        summary.modules += adapter.deltas.map { AdapterSummary.Module(name: $0.name, rank: 0, inferenceParameters: $0.data.elementCount) }
        return summary
    }

    // MARK: - Reading

    /// The file's keys grouped by module, each module handed to its family.
    package static func read(_ path: String) throws -> (adapter: Adapter, modules: [KohyaModule]) {
        let store = try TensorStore.open(path)
        var byModule: [String: [String: TensorData]] = [:]
        var order: [String] = []
        var leftovers: [String] = []
        for e in store.entries {
            let key = e.info.name
            guard isKohyaKey(key), let dot = key.firstIndex(of: ".") else { leftovers.append(key); continue }
            let module = String(key[..<dot]), suffix = String(key[key.index(after: dot)...])
            if byModule[module] == nil { order.append(module) }
            byModule[module, default: [:]][suffix] = .stored(store, e)
        }
        var loras: [LoraModule] = []
        var deltas: [FullDelta] = []
        var parsed: [KohyaModule] = []
        var familiesUsed: [String] = []
        var unsupported: [String] = []
        for name in order {
            let module = KohyaModule(name: name, tensors: byModule[name] ?? [:], file: path)
            guard let family = families.first(where: { f in f.markers.contains { module.tensors[$0] != nil } }) else {
                let keys = module.tensors.keys.sorted().map { name + "." + $0 }
                if module.tensors.keys.contains(where: { s in recognizedUnsupported.contains { s.hasPrefix($0.prefix) } }) {
                    unsupported += keys
                } else {
                    leftovers += keys
                }
                continue
            }
            let result = try family.parse(module)
            loras += result.modules
            deltas += result.deltas
            if !familiesUsed.contains(family.name) { familiesUsed.append(family.name) }
            let unused = module.tensors.keys.filter { !result.consumed.contains($0) }.sorted()
            for s in unused {
                if recognizedUnsupported.contains(where: { s.hasPrefix($0.prefix) }) { unsupported.append(name + "." + s) } else { leftovers.append(name + "." + s) }
            }
            parsed.append(module)
        }
        if !unsupported.isEmpty {
            var kinds: [String] = []
            for key in unsupported {
                let suffix = key.split(separator: ".", maxSplits: 1).last.map(String.init) ?? key
                if let kind = recognizedUnsupported.first(where: { suffix.hasPrefix($0.prefix) })?.kind, !kinds.contains(kind) { kinds.append(kind) }
            }
            throw AdapterError.unsupported(path: path, reason: "\(kinds.joined(separator: ", ")) keys are not supported: \(listed(unsupported))")
        }
        if !leftovers.isEmpty {
            throw AdapterError.invalidTensors(path: path, module: "(file)", reason: "\(leftovers.count) key\(leftovers.count == 1 ? "" : "s") no kohya module type uses: \(listed(leftovers))")
        }
        if loras.isEmpty && deltas.isEmpty {
            throw AdapterError.invalidTensors(path: path, module: "(file)", reason: "no LoRA modules (no lora_down/lora_up pairs)")
        }
        let kind: AdapterKind
        if familiesUsed.contains(where: { $0 != loraFamily.name }) {
            kind = .lycoris
        } else if loras.contains(where: { $0.magnitude != nil }) {
            kind = .kohyaDora
        } else if loras.contains(where: { $0.a.shape.count == 4 && $0.a.shape.dropFirst(2).reduce(1, *) > 1 }) {
            kind = .kohyaLocon
        } else {
            kind = .kohyaLora
        }
        var facts = details(loras: loras, deltas: deltas, modules: parsed, families: familiesUsed, keys: store.tensorCount)
        facts["adapter_kind"] = kind.rawValue
        return (Adapter(path: path, kind: kind, modules: loras, deltas: deltas, naming: SDModuleNames.kohyaNaming, details: facts), parsed)
    }

    /// "a, b, c, ... (N in all)": the first few of a long list.
    static func listed(_ keys: [String]) -> String {
        keys.prefix(8).joined(separator: ", ") + (keys.count > 8 ? ", ... (\(keys.count) in all)" : "")
    }

    static func details(loras: [LoraModule], deltas: [FullDelta], modules: [KohyaModule], families: [String], keys: Int) -> [String: String] {
        var d: [String: String] = ["keys": String(keys), "modules": String(modules.count), "module_types": families.joined(separator: ", ")]
        let ranks = Set(loras.map(\.rank)).sorted()
        if let lo = ranks.first, let hi = ranks.last { d["rank"] = lo == hi ? String(lo) : "\(lo)-\(hi)" }
        let alphas = Set(modules.compactMap { try? $0.alpha() }).sorted()
        d["alphas"] = alphas.isEmpty ? "none (alpha = rank)" : alphas.map { $0 == $0.rounded() && abs($0) < 1e15 ? String(Int($0)) : String($0) }.joined(separator: ", ")
        for p in SDModuleNames.kohyaPrefixes {
            let n = modules.filter { $0.name.hasPrefix(p) }.count
            if n > 0 { d[String(p.dropLast())] = String(n) }
        }
        let conv = loras.filter { $0.a.shape.count == 4 && $0.a.shape.dropFirst(2).reduce(1, *) > 1 }.count
        if conv > 0 { d["conv_modules"] = String(conv) }
        if loras.contains(where: { $0.magnitude != nil }) { d["dora"] = "true" }
        if !deltas.isEmpty { d["full_deltas"] = String(deltas.count) }
        return d
    }

    // MARK: - Module families

    /// Families in the order a module is offered to them: LyCORIS's (KohyaFormat+LyCORIS.swift)
    /// first, since a Tucker LoCon has lora_down/lora_up as well as lora_mid.
    package static var families: [KohyaModuleFamily] { lycorisFamilies + [loraFamily] }

    /// Key suffixes of module types known but not (yet) read, and what to call them.
    package static let recognizedUnsupported: [(prefix: String, kind: String)] = [
        ("hada_", "LyCORIS LoHa"), ("lokr_", "LyCORIS LoKr"), ("lora_mid", "LoCon Tucker (lora_mid)"),
        ("diff", "full delta (diff)"), ("oft_", "OFT"), ("w_norm", "LyCORIS norm"), ("b_norm", "LyCORIS norm"),
        ("a1.", "GLoRA"), ("a2.", "GLoRA"), ("b1.", "GLoRA"), ("b2.", "GLoRA"), ("on_input", "LyCORIS"),
    ]

    /// lora_down [r, in] or [r, in, kh, kw], lora_up [out, r] or [out, r, 1, 1]; scale alpha/r.
    package static let loraFamily = KohyaModuleFamily(name: "lora", markers: ["lora_down.weight", "lora_up.weight"]) { module in
        guard let down = module.tensors["lora_down.weight"], let up = module.tensors["lora_up.weight"] else {
            throw module.error("has \(module.tensors["lora_down.weight"] == nil ? "lora_up.weight but no lora_down.weight" : "lora_down.weight but no lora_up.weight")")
        }
        let r = down.shape.first ?? 0
        guard (down.shape.count == 2 || down.shape.count == 4), r > 0 else {
            throw module.error("lora_down.weight has shape \(down.shape); expected [r, in] or [r, in, kh, kw]")
        }
        guard (up.shape.count == 2 || (up.shape.count == 4 && up.shape[2] == 1 && up.shape[3] == 1)), up.shape[1] == r else {
            throw module.error("lora_up.weight has shape \(up.shape); expected [out, \(r)] or [out, \(r), 1, 1] for lora_down.weight \(down.shape)")
        }
        let alpha = try module.alpha() ?? Double(r)
        var magnitude: TensorData?
        if let scale = module.tensors["dora_scale"] {
            // Weight-decomposed per output feature ([out, 1, ...]): PEFT's DoRA magnitude.
            let out = up.shape[0]
            guard scale.elementCount == out, scale.shape.first == out else {
                if scale.shape.count >= 2, scale.shape[0] == 1 {
                    throw AdapterError.unsupported(path: module.file, reason: "module \(module.name): dora_scale \(scale.shape) is per input feature (wd_on_out=False); only per-output DoRA can be merged")
                }
                throw module.error("dora_scale has shape \(scale.shape); expected [\(out), 1]")
            }
            magnitude = scale
        }
        let lora = LoraModule(path: module.name, a: down, b: up, magnitude: magnitude, rank: r, scaling: alpha / Double(r))
        return KohyaParsed(modules: [lora], consumed: ["lora_down.weight", "lora_up.weight", "alpha", "dora_scale"])
    }
}

/// One kohya module's tensors by key suffix (`lora_down.weight`, `alpha`, `hada_w1_a`, ...).
package struct KohyaModule: Sendable {
    package var name: String
    package var tensors: [String: TensorData]
    /// The adapter file, for messages.
    package var file: String

    /// The module's `alpha`, or nil when it has none or it is 0 (both mean alpha = rank).
    package func alpha() throws -> Double? {
        guard let t = tensors["alpha"] else { return nil }
        guard t.elementCount == 1 else { throw error("alpha has shape \(t.shape); expected a scalar") }
        let v = Double(try t.floats()[0])
        guard v.isFinite else { throw error("alpha is \(v)") }
        return v == 0 ? nil : v
    }

    package func error(_ reason: String) -> AdapterError {
        .invalidTensors(path: file, module: name, reason: reason)
    }
}

/// What a family made of one module: low-rank modules, full deltas, and the suffixes it used.
package struct KohyaParsed: Sendable {
    package var modules: [LoraModule]
    package var deltas: [FullDelta]
    package var consumed: Set<String>

    package init(modules: [LoraModule] = [], deltas: [FullDelta] = [], consumed: Set<String>) {
        self.modules = modules
        self.deltas = deltas
        self.consumed = consumed
    }
}

/// A kind of kohya module (LoRA, LoHa, LoKr, ...): the key suffixes that mark it and how its
/// keys become the neutral model. FullDelta and LoraModule names are the kohya module name
/// (`<name>.weight` / `<name>.bias` for deltas), resolved by `SDModuleNames.kohyaNaming`.
package struct KohyaModuleFamily: Sendable {
    package var name: String
    package var markers: [String]
    package var parse: @Sendable (KohyaModule) throws -> KohyaParsed

    package init(name: String, markers: [String], parse: @escaping @Sendable (KohyaModule) throws -> KohyaParsed) {
        self.name = name
        self.markers = markers
        self.parse = parse
    }
}
