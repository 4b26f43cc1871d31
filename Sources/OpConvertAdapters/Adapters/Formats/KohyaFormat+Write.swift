import OpConvertCore
import OpConvertTensors

/// Writing kohya/A1111 LoRA files (`convert --to kohya`): `<name>.lora_down.weight` (A),
/// `<name>.lora_up.weight` (B), `<name>.alpha` (scaling·r, so each module keeps its own
/// alpha) and `<name>.dora_scale` for DoRA, in one .safetensors file.
extension KohyaFormat {
    public static let canWrite = true

    public static func checkOutput(_ path: String, policy: OutputPolicy) throws {
        guard path.hasSuffix(".safetensors") else {
            throw AdapterError.cannotWrite(path: path, reason: "a kohya LoRA is one file: name the output *.safetensors")
        }
        try OutputGuard.check(path, kind: .safetensorsFile, policy: policy)
    }

    /// Names: kept for a kohya input; otherwise found through `--base`: the UNet gets the
    /// numbering its trainers write (diffusers block paths for SD1.x/2.x, the original SGM
    /// paths when the base has a second text encoder, i.e. SDXL).
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        try checkOutput(path, policy: OutputPolicy(overwrite: options.overwrite, inputs: options.inputs))
        try SDLoraWriting.refuseNonLowRank(adapter, output: path, format: "a kohya LoRA")
        let kohyaKinds: [AdapterKind] = [.kohyaLora, .kohyaLocon, .kohyaDora, .lycoris]
        let names = try SDLoraWriting.respell(adapter, output: path, base: options.base, format: "kohya",
                                              keep: kohyaKinds.contains(adapter.kind), table: { $0.kohya }, choose: chooseName)
        var tensors: [SDLoraWriting.Tensor] = []
        for (m, name) in zip(adapter.modules, names) {
            let dtype = try SDLoraWriting.dtype(options.dtype, m.a, output: path)
            tensors.append(.init(name: name + ".lora_down.weight", data: m.a, shape: m.a.shape, dtype: dtype))
            tensors.append(.init(name: name + ".lora_up.weight", data: m.b, shape: m.b.shape, dtype: dtype))
            let alpha = Float(m.scaling * Double(m.rank))
            guard alpha.isFinite else { throw AdapterError.cannotWrite(path: path, reason: "module \(m.path): alpha = scaling·r = \(alpha)") }
            tensors.append(.init(name: name + ".alpha", data: .memory(values: [alpha], shape: []), shape: [], dtype: dtype))
            if let mag = m.magnitude {
                // LyCORIS's per-output dora_scale: [out, 1] for linears, [out, 1, 1, 1] for convs.
                let out = m.b.shape[0]
                let shape = mag.shape.first == out && mag.elementCount == out && mag.shape.count > 1 ? mag.shape
                    : [out] + Array(repeating: 1, count: max(m.a.shape.count - 1, 1))
                tensors.append(.init(name: name + ".dora_scale", data: mag, shape: shape, dtype: dtype))
            }
        }
        try SDLoraWriting.writeFile(path, tensors: tensors, metadata: ["format": "pt"],
                                    policy: OutputPolicy(overwrite: options.overwrite, inputs: options.inputs))
        return [FileSystem.split(path).name]
    }

    /// Of a UNet module's kohya names (its diffusers path and its original path, underscored),
    /// the one its trainers write; text encoders have one name.
    static func chooseName(_ names: [String], _ sd: SDModuleNames) -> String? {
        guard names.count > 1 else { return names.first }
        let diffusersStyle = Set(sd.diffusers.keys.compactMap { path in
            path.hasPrefix("unet.") ? "lora_unet_" + SDModuleNames.underscored(String(path.dropFirst(5))) : nil
        })
        let sdxl = sd.kohya.keys.contains { $0.hasPrefix("lora_te2_") }
        return names.first { diffusersStyle.contains($0) != sdxl } ?? names.first
    }
}
