import OpConvertCore
import OpConvertTensors

/// Writes OP checkpoints (format v1): op_config.json + op_model.safetensors, or
/// op_model.safetensors.zst when compressed.
public enum OPCheckpointWriter {
    /// - tensors: v1-named tensors; stored values are copied or cast to `dtype` (when given,
    ///   floats only), in-memory values are encoded to `dtype` (default f32).
    /// - carrying: other files copied into the checkpoint under their own names.
    public static func write(to path: String, config: JSONValue, tensors: [(name: String, data: TensorData)],
                             metadata: [String: String] = [:], dtype: DType? = nil, compress: Bool, overwrite: Bool,
                             inputs: [String] = [], carrying: [String] = []) throws {
        let dir = try OutputDirectory(path: path, policy: OutputPolicy(overwrite: overwrite, inputs: inputs),
                                      names: carrying.map { FileSystem.split($0).name })
        let specs = tensors.map { TensorSpec(name: $0.name, dtype: $0.data.dtype.casting(to: dtype), shape: $0.data.shape) }
        var meta = metadata
        meta["format"] = meta["format"] ?? "pt"
        let name = OPCheckpoint.weightsName + (compress ? ".zst" : "")
        let writer = try SafetensorsWriter(path: dir.path(name), tensors: specs, metadata: meta, compressed: compress)
        var byName: [String: TensorData] = [:]
        for t in tensors { byName[t.name] = t.data }
        let chunk = ChunkBuffer()
        for spec in writer.layout.order {
            switch byName[spec.name]! {
            case let .stored(store, entry):
                try chunk.write(store.data(entry), from: entry.info.dtype, to: spec.dtype, count: entry.info.elementCount, into: writer)
            case let .memory(values, _):
                try values.withUnsafeBytes { raw in
                    try chunk.write(raw, from: .f32, to: spec.dtype, count: values.count, into: writer)
                }
            case let .computed(c):
                let values = try c.values()
                try values.withUnsafeBytes { raw in
                    try chunk.write(raw, from: .f64, to: spec.dtype, count: values.count, into: writer)
                }
            }
        }
        try writer.finish(sync: true)
        let cfg = try OutputFile(path: dir.path(OPConfig.fileName))
        try cfg.write(Array((JSONWriter.serialize(config, style: .python(indent: 2, sortKeys: true)) + "\n").utf8))
        try cfg.commit(sync: true)
        for source in carrying { try FileSystem.copyFile(from: source, to: dir.path(FileSystem.split(source).name)) }
        try dir.commit()
    }
}

extension OPCheckpoint {
    /// The checkpoint's tensors under their v1 names (after any key map).
    public var v1Tensors: [(name: String, data: TensorData)] {
        var out: [(String, TensorData)] = []
        func add(_ module: String, _ head: String, _ m: OPMLP) {
            let p = "base_model.model.\(module).\(head)."
            out += [(p + "z", m.z), (p + "fc1.weight", m.fc1Weight), (p + "fc1.bias", m.fc1Bias),
                    (p + "fc2.weight", m.fc2Weight), (p + "fc2.bias", m.fc2Bias)]
        }
        for m in modules {
            switch m.generator {
            case let .joint(g): add(m.path, "op_mlp", g)
            case let .separate(a, b): add(m.path, "op_mlp_A", a); add(m.path, "op_mlp_B", b)
            }
            let p = "base_model.model.\(m.path).op_mlp."
            if let w = m.magnitudeWeight { out.append((p + "magnitude.weight", w)) }
            if let b = m.magnitudeBias { out.append((p + "magnitude.bias", b)) }
            if let o = m.magnitudeOffset { out.append((p + "magnitude_offset", o)) }
        }
        return out
    }
}
