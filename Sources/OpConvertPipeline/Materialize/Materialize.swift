import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

public struct MaterializeOptions: Sendable {
    public var checkpoint: String
    public var output: String
    public var dtype: FloatDType
    /// Base model to read module shapes from (needed when the checkpoint cannot tell them).
    public var base: String?
    public var keyMap: String?
    public var overwrite: Bool
    /// The adapter format to write (PEFT when nil); any format with a writer.
    public var to: AdapterFormatID?
    /// opconvert's version for the README.md model card of a PEFT output; nil: no card.
    public var modelCardVersion: String?

    public init(checkpoint: String, output: String, dtype: FloatDType = .f32, base: String? = nil, keyMap: String? = nil, overwrite: Bool = false) {
        self.checkpoint = checkpoint
        self.output = output
        self.dtype = dtype
        self.base = base
        self.keyMap = keyMap
        self.overwrite = overwrite
    }
}

public struct MaterializeSummary: Codable, Sendable {
    public var checkpoint: String
    public var output: String
    public var modules: Int
    public var dora: Bool
    public var trainParameters: Int
    public var inferenceParameters: Int
    public var checkpointBytes: Int
    public var seconds: Double
}

/// `opconvert materialize`: OP checkpoint -> PEFT LoRA/DoRA adapter directory.
public enum Materializer {
    public static func run(_ options: MaterializeOptions) throws -> MaterializeSummary {
        let started = Date()
        let keyMap = try options.keyMap.map { try KeyMap(path: $0) }
        let checkpoint = try OPCheckpoint(path: options.checkpoint, keyMap: keyMap)
        let base = try options.base.map { try TensorStore.open($0) }
        let inputs = [options.checkpoint] + checkpoint.store.inputPaths + (base?.inputPaths ?? []) + (options.keyMap.map { [$0] } ?? [])
        try OutputGuard.check(options.output, kind: .directory, policy: OutputPolicy(overwrite: options.overwrite, inputs: inputs))
        if let to = options.to, to != .peft {
            return try materialize(checkpoint, base: base, to: to, options: options, inputs: inputs, started: started)
        }
        // Shapes first (every error before anything is written), then one module at a time.
        let layouts = try checkpoint.modules.map { try checkpoint.adapterLayout(of: $0, base: base) }
        try PEFTAdapterWriter.write(to: options.output, config: checkpoint.materializedPEFTConfig, layouts: layouts,
                                    dtype: options.dtype.dtype, overwrite: options.overwrite, inputs: inputs,
                                    extraFiles: modelCardFiles(options, checkpoint: checkpoint, modules: layouts.count)) { i in
            try checkpoint.materialize(checkpoint.modules[i], base: base)
        }
        return MaterializeSummary(checkpoint: options.checkpoint, output: options.output, modules: layouts.count,
                                  dora: checkpoint.isDoRA, trainParameters: checkpoint.trainParameters,
                                  inferenceParameters: checkpoint.inferenceParameters,
                                  checkpointBytes: checkpoint.store.totalBytes, seconds: Date().timeIntervalSince(started))
    }

    /// Through the neutral model into another format's writer (MLX, GGUF, ...).
    static func materialize(_ checkpoint: OPCheckpoint, base: TensorStore?, to: AdapterFormatID, options: MaterializeOptions,
                            inputs: [String], started: Date) throws -> MaterializeSummary {
        let writer = try AdapterRegistry.writer(to, refusal: "\(options.checkpoint): cannot materialize into \(to.rawValue)")
        try writer.checkOutput(options.output, policy: OutputPolicy(overwrite: options.overwrite, inputs: inputs))
        let adapter = try checkpoint.adapter(base: base)
        _ = try writer.write(adapter, to: options.output, options: AdapterWriteOptions(
            dtype: options.dtype.dtype, overwrite: options.overwrite, inputs: inputs, base: base))
        return MaterializeSummary(checkpoint: options.checkpoint, output: options.output, modules: adapter.modules.count,
                                  dora: checkpoint.isDoRA, trainParameters: checkpoint.trainParameters,
                                  inferenceParameters: checkpoint.inferenceParameters,
                                  checkpointBytes: checkpoint.store.totalBytes, seconds: Date().timeIntervalSince(started))
    }
}
