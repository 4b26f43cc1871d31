/// Writes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
/// `PeftModel.from_pretrained` loads with no missing or unexpected keys.
public enum PEFTAdapterWriter {
    /// - config: the adapter_config.json object, written as PEFT writes it (sorted keys,
    ///   2-space indent).
    /// - modules: LoRA factors in f32, stored as `dtype` (PEFT itself stores f32).
    public static func write(to path: String, config: JSONValue, modules: [MaterializedModule], dtype: DType = .f32,
                             overwrite: Bool) throws -> [String] {
        if FileSystem.exists(path) && !overwrite { throw PipelineError.outputExists(path) }
        var tensors: [(TensorSpec, [Float])] = []
        for m in modules {
            let key = "base_model.model.\(m.path)"
            tensors.append((TensorSpec(name: key + ".lora_A.weight", dtype: dtype, shape: m.aShape), m.a))
            tensors.append((TensorSpec(name: key + ".lora_B.weight", dtype: dtype, shape: m.bShape), m.b))
            if let mag = m.magnitude {
                tensors.append((TensorSpec(name: key + ".lora_magnitude_vector", dtype: dtype, shape: [mag.count]), mag))
            }
        }
        let dir = try OutputDirectory(path: path)
        let writer = try SafetensorsWriter(path: dir.path("adapter_model.safetensors"), tensors: tensors.map(\.0), metadata: ["format": "pt"])
        var byName: [String: [Float]] = [:]
        for (spec, values) in tensors { byName[spec.name] = values }
        for spec in writer.layout.order {
            let values = byName[spec.name]!
            let width = dtype.byteWidth!
            var bytes = [UInt8](repeating: 0, count: values.count * width)
            values.withUnsafeBufferPointer { v in
                bytes.withUnsafeMutableBytes { out in
                    if !values.isEmpty { DTypeConversion.encode(v.baseAddress!, to: out.baseAddress!, dtype, count: values.count) }
                }
            }
            try bytes.withUnsafeBytes { try writer.write($0) }
        }
        try writer.finish(sync: true)
        let configFile = try OutputFile(path: dir.path("adapter_config.json"))
        try configFile.write(Array(JSONWriter.serialize(config, style: .python(indent: 2, sortKeys: true)).utf8))
        try configFile.commit(sync: true)
        try dir.commit(replacing: overwrite)
        return ["adapter_config.json", "adapter_model.safetensors"]
    }
}
