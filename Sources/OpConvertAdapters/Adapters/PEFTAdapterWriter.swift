import OpConvertCore
import OpConvertTensors

/// The shapes of one module of an adapter to be written.
public struct AdapterModuleLayout: Sendable {
    public var path: String
    public var aShape: [Int]
    public var bShape: [Int]
    /// Length of the DoRA magnitude vector, if any.
    public var magnitudeCount: Int?

    public init(path: String, aShape: [Int], bShape: [Int], magnitudeCount: Int?) {
        self.path = path
        self.aShape = aShape
        self.bShape = bShape
        self.magnitudeCount = magnitudeCount
    }
}

/// Writes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
/// `PeftModel.from_pretrained` loads with no missing or unexpected keys.
public enum PEFTAdapterWriter {
    /// Streaming form: `produce(i)` computes module i when the file reaches it (a module's
    /// tensors are adjacent in the file's name order), so one module is in memory at a time.
    /// - config: the adapter_config.json object, written as PEFT writes it (sorted keys,
    ///   2-space indent).
    /// - dtype: storage of the factors (PEFT itself stores f32).
    /// - extraFiles: more files for the directory (a model card), written as given.
    public static func write(to path: String, config: JSONValue, layouts: [AdapterModuleLayout], dtype: DType = .f32,
                             overwrite: Bool, inputs: [String] = [], extraFiles: [(name: String, contents: [UInt8])] = [],
                             produce: (Int) throws -> MaterializedModule) throws {
        let policy = OutputPolicy(overwrite: overwrite, inputs: inputs)
        try OutputGuard.check(path, kind: .directory, policy: policy)
        enum Part { case a, b, magnitude }
        var specs: [TensorSpec] = []
        var source: [String: (module: Int, part: Part)] = [:]
        for (i, m) in layouts.enumerated() {
            let key = "base_model.model.\(m.path)"
            specs.append(TensorSpec(name: key + ".lora_A.weight", dtype: dtype, shape: m.aShape))
            source[specs.last!.name] = (i, .a)
            specs.append(TensorSpec(name: key + ".lora_B.weight", dtype: dtype, shape: m.bShape))
            source[specs.last!.name] = (i, .b)
            if let n = m.magnitudeCount {
                specs.append(TensorSpec(name: key + ".lora_magnitude_vector", dtype: dtype, shape: [n]))
                source[specs.last!.name] = (i, .magnitude)
            }
        }
        let dir = try OutputDirectory(path: path, policy: policy)
        let writer = try SafetensorsWriter(path: dir.path("adapter_model.safetensors"), tensors: specs, metadata: ["format": "pt"])
        let chunk = ChunkBuffer()
        var current: (index: Int, module: MaterializedModule)?
        for spec in writer.layout.order {
            let (i, part) = source[spec.name]!
            if current?.index != i { current = (i, try produce(i)) }
            let m = current!.module
            let values: [Float]
            switch part {
            case .a: values = m.a
            case .b: values = m.b
            case .magnitude: values = m.magnitude ?? []
            }
            guard values.count == spec.elementCount else {
                throw PipelineError.invalidArgument("module \(m.path): \(spec.name) has \(values.count) values, expected \(spec.elementCount) (internal error)")
            }
            try values.withUnsafeBytes { try chunk.write($0, from: .f32, to: dtype, count: values.count, into: writer) }
        }
        try writer.finish(sync: true)
        let configFile = try OutputFile(path: dir.path("adapter_config.json"))
        try configFile.write(Array(JSONWriter.serialize(config, style: .python(indent: 2, sortKeys: true)).utf8))
        try configFile.commit(sync: true)
        for extra in extraFiles {
            let f = try OutputFile(path: dir.path(extra.name))
            try f.write(extra.contents)
            try f.commit(sync: true)
        }
        try dir.commit()
    }

    /// Writes modules already in memory.
    public static func write(to path: String, config: JSONValue, modules: [MaterializedModule], dtype: DType = .f32,
                             overwrite: Bool, inputs: [String] = []) throws {
        let layouts = modules.map { AdapterModuleLayout(path: $0.path, aShape: $0.aShape, bShape: $0.bShape, magnitudeCount: $0.magnitude?.count) }
        try write(to: path, config: config, layouts: layouts, dtype: dtype, overwrite: overwrite, inputs: inputs) { modules[$0] }
    }
}
