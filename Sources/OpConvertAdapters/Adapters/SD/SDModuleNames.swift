import OpConvertCore
import OpConvertTensors

/// Stable Diffusion module names, built forward from a base's own tensor names (kohya's
/// underscored names cannot be parsed back into paths). Bases: a diffusers pipeline
/// directory (names `unet/...`, `text_encoder/...`, `text_encoder_2/...`, `transformer/...`),
/// an SD1.x/2.x LDM single file (`model.diffusion_model.*`, `cond_stage_model.*`) or an SDXL
/// SGM single file (`conditioner.embedders.0/1.*`). Every linear/conv module (anything with
/// a `.weight`) gets its kohya name and its diffusers path; the UNet gets both the diffusers
/// and the original (LDM/SGM) block numbering as kohya names, since SD1.x trainers write one
/// and SDXL trainers the other.
public struct SDModuleNames: Sendable {
    /// A module's tensors in the base: its weight (or the fused tensor holding it), its bias,
    /// and its part of the fused tensor's rows.
    public struct Target: Sendable, Hashable {
        public var weight: String
        public var bias: String?
        public var part: RowPart?
        /// The base stores the weight as [in, out] (OpenCLIP's text_projection).
        public var transposed = false
    }

    /// kohya module name (`lora_unet_down_blocks_0_...`, `lora_te1_text_model_...`) -> target.
    public private(set) var kohya: [String: [Target]] = [:]
    /// diffusers module path (`unet.down_blocks.0....to_q`, `text_encoder.text_model....`) -> target.
    public private(set) var diffusers: [String: [Target]] = [:]

    /// kohya's prefixes, in the order inspect lists them.
    public static let kohyaPrefixes = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_"]

    /// One module of a component, in diffusers/transformers naming.
    private struct Module {
        var component: Component
        var path: String
        /// The UNet module's original (LDM/SGM) path, when known.
        var original: String?
        var target: Target
    }

    private enum Component: String {
        case unet, textEncoder = "text_encoder", textEncoder2 = "text_encoder_2", transformer
    }

    public init(baseNames: [String]) {
        let names = Set(baseNames)
        var modules: [Module] = []
        let unetDiffusers = baseNames.compactMap { $0.hasPrefix("unet/") ? String($0.dropFirst(5)) : nil }
        let unetLDM = baseNames.compactMap { $0.hasPrefix(Self.ldmUNet) ? String($0.dropFirst(Self.ldmUNet.count)) : nil }
        let diffusersLayout = UNetLayout(diffusersNames: unetDiffusers)
        let ldmLayout = UNetLayout(ldmNames: unetLDM)
        var hasSecondEncoder = false
        for name in baseNames {
            guard let (prefix, rest) = Self.split(name) else { continue }
            switch prefix {
            case "unet/":
                for m in Self.weightModules(rest, fullPrefix: prefix, names: names) {
                    modules.append(Module(component: .unet, path: m.path, original: diffusersLayout.flatMap { $0.ldmPath(m.path) }, target: m.target))
                }
            case Self.ldmUNet:
                for m in Self.weightModules(rest, fullPrefix: prefix, names: names) {
                    // Without a diffusers path the module still gets its original kohya name.
                    modules.append(Module(component: .unet, path: ldmLayout.flatMap { $0.diffusersPath(m.path) } ?? "", original: m.path, target: m.target))
                }
            case "text_encoder/", "cond_stage_model.transformer.", "conditioner.embedders.0.transformer.":
                // Older SD1.x files lack CLIPTextModel's `text_model.` level; kohya names have it.
                let level = prefix != "text_encoder/" && !rest.hasPrefix("text_model.") ? "text_model." : ""
                modules += Self.weightModules(rest, fullPrefix: prefix, names: names).map { Module(component: .textEncoder, path: level + $0.path, target: $0.target) }
            case "text_encoder_2/":
                hasSecondEncoder = true
                modules += Self.weightModules(rest, fullPrefix: prefix, names: names).map { Module(component: .textEncoder2, path: $0.path, target: $0.target) }
            case "conditioner.embedders.1.model.":
                hasSecondEncoder = true
                modules += Self.openCLIPModules(rest, fullPrefix: prefix, names: names).map { Module(component: .textEncoder2, path: $0.path, target: $0.target) }
            case "cond_stage_model.model.":
                // SD 2.x: the only text encoder, in OpenCLIP form.
                modules += Self.openCLIPModules(rest, fullPrefix: prefix, names: names).map { Module(component: .textEncoder, path: $0.path, target: $0.target) }
            case "transformer/":
                modules += Self.weightModules(rest, fullPrefix: prefix, names: names).map { Module(component: .transformer, path: $0.path, target: $0.target) }
            default:
                continue
            }
        }
        for m in modules {
            var kohyaNames: [String] = []
            switch m.component {
            case .unet:
                if !m.path.isEmpty { kohyaNames.append("lora_unet_" + Self.underscored(m.path)) }
                if let o = m.original { kohyaNames.append("lora_unet_" + Self.underscored(o)) }
            case .textEncoder: kohyaNames.append((hasSecondEncoder ? "lora_te1_" : "lora_te_") + Self.underscored(m.path))
            case .textEncoder2: kohyaNames.append("lora_te2_" + Self.underscored(m.path))
            case .transformer: kohyaNames.append("lora_transformer_" + Self.underscored(m.path))
            }
            for k in kohyaNames where !(kohya[k]?.contains(m.target) ?? false) { kohya[k, default: []].append(m.target) }
            if !m.path.isEmpty { diffusers[m.component.rawValue + "." + m.path, default: []].append(m.target) }
        }
    }

    /// The spelling table for `TableModuleNaming`: `<name>.weight` and `<name>.bias` for
    /// every name in `names`.
    public static func spellings(_ names: [String: [Target]]) -> [String: [ModuleTarget]] {
        var table: [String: [ModuleTarget]] = [:]
        for (name, targets) in names {
            for t in targets {
                table[name + ".weight", default: []].append(ModuleTarget(tensor: t.weight, part: t.part, transposed: t.transposed))
                if let b = t.bias { table[name + ".bias", default: []].append(ModuleTarget(tensor: b, part: t.part)) }
            }
        }
        return table
    }

    /// kohya module names (`lora_unet_...`, `lora_te*_...`) resolved against the base.
    public static let kohyaNaming = TableModuleNaming { spellings(SDModuleNames(baseNames: $0).kohya) }
    /// diffusers module paths (`unet.down_blocks...`, `text_encoder.text_model...`) resolved against the base.
    public static let diffusersNaming = TableModuleNaming { spellings(SDModuleNames(baseNames: $0).diffusers) }

    // MARK: - Name pieces

    static let ldmUNet = "model.diffusion_model."
    private static let prefixes = ["unet/", "text_encoder/", "text_encoder_2/", "transformer/", ldmUNet,
                                   "cond_stage_model.transformer.", "cond_stage_model.model.",
                                   "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."]

    private static func split(_ name: String) -> (String, String)? {
        for p in prefixes where name.hasPrefix(p) { return (p, String(name.dropFirst(p.count))) }
        return nil
    }

    package static func underscored(_ path: String) -> String { path.replacingOccurrences(of: ".", with: "_") }

    /// `<path>.weight` is a module (with `<path>.bias` when the base has it).
    private static func weightModules(_ rest: String, fullPrefix: String, names: Set<String>) -> [(path: String, target: Target)] {
        guard rest.hasSuffix(".weight") else { return [] }
        let path = String(rest.dropLast(".weight".count))
        let bias = fullPrefix + path + ".bias"
        return [(path, Target(weight: fullPrefix + rest, bias: names.contains(bias) ? bias : nil, part: nil))]
    }

    /// OpenCLIP's text tower in transformers' CLIPTextModel names: the fused
    /// `attn.in_proj_weight` [3d, d] holds q, k and v in that row order.
    private static func openCLIPModules(_ rest: String, fullPrefix: String, names: Set<String>) -> [(path: String, target: Target)] {
        let c = rest.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if c.count >= 4, c[0] == "transformer", c[1] == "resblocks", Int(c[2]) != nil {
            let layer = "text_model.encoder.layers.\(c[2])."
            let tail = Array(c[3...])
            if tail == ["attn", "in_proj_weight"] {
                let bias = fullPrefix + "transformer.resblocks.\(c[2]).attn.in_proj_bias"
                return ["q_proj", "k_proj", "v_proj"].enumerated().map { i, proj in
                    (layer + "self_attn." + proj, Target(weight: fullPrefix + rest, bias: names.contains(bias) ? bias : nil, part: RowPart(index: i, count: 3)))
                }
            }
            guard tail.last == "weight" else { return [] }
            let module = tail.dropLast().joined(separator: ".")
            let mapped: [String: String] = ["attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                                            "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"]
            guard let hf = mapped[module] else { return [] }
            return weightModules(rest, fullPrefix: fullPrefix, names: names).map { (layer + hf, $0.target) }
        }
        if rest == "text_projection" {
            // A bare parameter [hidden, proj] used as x @ P: transformers' text_projection.weight transposed.
            return [("text_projection", Target(weight: fullPrefix + rest, bias: nil, part: nil, transposed: true))]
        }
        let top: [String: String] = ["ln_final.weight": "text_model.final_layer_norm", "token_embedding.weight": "text_model.embeddings.token_embedding"]
        guard let hf = top[rest] else { return [] }
        return weightModules(rest, fullPrefix: fullPrefix, names: names).map { (hf, $0.target) }
    }
}

/// The UNet's block numbering: diffusers' down/mid/up blocks against the original
/// input/middle/output blocks, given `layers_per_block` (read off the names) and which up
/// blocks have attention (the upsampler's index in its output block depends on it).
package struct UNetLayout: Sendable {
    package let layersPerBlock: Int
    /// diffusers up-block indices that have attentions.
    let upWithAttention: Set<Int>
    /// LDM output-block indices that have an attention at position 1.
    let outputWithAttention: Set<Int>

    package init?(diffusersNames: [String]) {
        var resnets = Set<Int>(), upAttn = Set<Int>()
        for n in diffusersNames {
            let c = n.split(separator: ".")
            if c.count > 3, c[0] == "down_blocks", c[1] == "0", c[2] == "resnets", let j = Int(c[3]) { resnets.insert(j) }
            if c.count > 2, c[0] == "up_blocks", let i = Int(c[1]), c[2] == "attentions" { upAttn.insert(i) }
        }
        guard !resnets.isEmpty else { return nil }
        layersPerBlock = resnets.count
        upWithAttention = upAttn
        outputWithAttention = []
    }

    package init?(ldmNames: [String]) {
        var downsamplers: [Int] = [], inputs = Set<Int>(), outAttn = Set<Int>()
        for n in ldmNames {
            let c = n.split(separator: ".")
            if c.count > 2, c[0] == "input_blocks", let i = Int(c[1]) {
                inputs.insert(i)
                if c.count > 3, c[2] == "0", c[3] == "op" { downsamplers.append(i) }
            }
            if c.count > 3, c[0] == "output_blocks", let i = Int(c[1]), c[2] == "1", c[3] != "conv" { outAttn.insert(i) }
        }
        if let first = downsamplers.min(), first > 1 {
            layersPerBlock = first - 1
        } else if let last = inputs.max(), last > 0 {
            layersPerBlock = last
        } else {
            return nil
        }
        upWithAttention = []
        outputWithAttention = outAttn
    }

    private static let resnetToLDM: [(String, String)] = [
        ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
    ]
    private static let topToLDM: [(String, String)] = [
        ("conv_in", "input_blocks.0.0"), ("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_norm_out", "out.0"), ("conv_out", "out.2"),
        ("mid_block.resnets.0", "middle_block.0"), ("mid_block.attentions.0", "middle_block.1"), ("mid_block.resnets.1", "middle_block.2"),
    ]

    /// `rest` after a leading `from` (whole dotted components), mapped to `to`.
    private static func replacePrefix(_ path: String, _ pairs: [(String, String)], reversed: Bool = false) -> String? {
        for (a, b) in pairs {
            let (from, to) = reversed ? (b, a) : (a, b)
            if path == from { return to }
            if path.hasPrefix(from + ".") { return to + path.dropFirst(from.count) }
        }
        return nil
    }

    private static func resnet(_ rest: [Substring], toLDM: Bool) -> String? {
        let joined = rest.joined(separator: ".")
        return replacePrefix(joined, resnetToLDM, reversed: !toLDM) ?? joined
    }

    /// diffusers path (`down_blocks.1.attentions.0.proj_in`) -> original (`input_blocks.4.1.proj_in`).
    package func ldmPath(_ path: String) -> String? {
        let stride = layersPerBlock + 1
        let c = path.split(separator: ".", omittingEmptySubsequences: false)
        func tail(_ from: Int) -> String { c.count > from ? "." + c[from...].joined(separator: ".") : "" }
        if c.count >= 3, c[0] == "mid_block", c[1] == "resnets", let j = Int(c[2]), j < 2 {
            return "middle_block.\(2 * j)" + (Self.resnet(Array(c[3...]), toLDM: true).map { $0.isEmpty ? "" : "." + $0 } ?? "")
        }
        if let top = Self.replacePrefix(path, Self.topToLDM) { return top }
        guard c.count >= 4, let i = Int(c[1]) else { return nil }
        switch (c[0], c[2]) {
        case ("down_blocks", "resnets"):
            guard let j = Int(c[3]), let r = Self.resnet(Array(c[4...]), toLDM: true) else { return nil }
            return "input_blocks.\(1 + i * stride + j).0" + (r.isEmpty ? "" : "." + r)
        case ("down_blocks", "attentions"):
            guard let j = Int(c[3]) else { return nil }
            return "input_blocks.\(1 + i * stride + j).1" + tail(4)
        case ("down_blocks", "downsamplers"):
            guard c[3] == "0", c.count >= 5, c[4] == "conv" else { return nil }
            return "input_blocks.\((i + 1) * stride).0.op" + tail(5)
        case ("up_blocks", "resnets"):
            guard let j = Int(c[3]), let r = Self.resnet(Array(c[4...]), toLDM: true) else { return nil }
            return "output_blocks.\(i * stride + j).0" + (r.isEmpty ? "" : "." + r)
        case ("up_blocks", "attentions"):
            guard let j = Int(c[3]) else { return nil }
            return "output_blocks.\(i * stride + j).1" + tail(4)
        case ("up_blocks", "upsamplers"):
            guard c[3] == "0", c.count >= 5, c[4] == "conv" else { return nil }
            return "output_blocks.\(i * stride + layersPerBlock).\(upWithAttention.contains(i) ? 2 : 1).conv" + tail(5)
        default:
            return nil
        }
    }

    /// original path (`output_blocks.2.1.conv`) -> diffusers (`up_blocks.0.upsamplers.0.conv`).
    package func diffusersPath(_ path: String) -> String? {
        let stride = layersPerBlock + 1
        let c = path.split(separator: ".", omittingEmptySubsequences: false)
        func tail(_ from: Int) -> String { c.count > from ? "." + c[from...].joined(separator: ".") : "" }
        if c.count >= 2, c[0] == "middle_block", let s = Int(c[1]) {
            switch s {
            case 0, 2: return "mid_block.resnets.\(s / 2)" + (Self.resnet(Array(c[2...]), toLDM: false).map { $0.isEmpty ? "" : "." + $0 } ?? "")
            case 1: return "mid_block.attentions.0" + tail(2)
            default: return nil
            }
        }
        if let top = Self.replacePrefix(path, Self.topToLDM, reversed: true) { return top }
        guard c.count >= 3, let n = Int(c[1]), let s = Int(c[2]) else { return nil }
        switch c[0] {
        case "input_blocks":
            guard n > 0 else { return nil }
            if n % stride == 0 {
                guard s == 0, c.count >= 4, c[3] == "op" else { return nil }
                return "down_blocks.\(n / stride - 1).downsamplers.0.conv" + tail(4)
            }
            let i = (n - 1) / stride, j = (n - 1) % stride
            switch s {
            case 0:
                let r = Self.resnet(Array(c[3...]), toLDM: false) ?? ""
                return "down_blocks.\(i).resnets.\(j)" + (r.isEmpty ? "" : "." + r)
            case 1: return "down_blocks.\(i).attentions.\(j)" + tail(3)
            default: return nil
            }
        case "output_blocks":
            let i = n / stride, j = n % stride
            let isUpsampler = (s == 1 || s == 2) && c.count >= 4 && c[3] == "conv"
            if isUpsampler { return "up_blocks.\(i).upsamplers.0.conv" + tail(4) }
            switch s {
            case 0:
                let r = Self.resnet(Array(c[3...]), toLDM: false) ?? ""
                return "up_blocks.\(i).resnets.\(j)" + (r.isEmpty ? "" : "." + r)
            case 1: return "up_blocks.\(i).attentions.\(j)" + tail(3)
            default: return nil
            }
        default:
            return nil
        }
    }
}
