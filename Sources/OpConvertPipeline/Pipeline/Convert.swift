import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// `opconvert convert`: re-writes a tensor set, casting float tensors to one dtype and
/// copying everything else byte for byte, keeping metadata.
public struct ConvertOptions: Sendable {
    public var input: String
    public var output: String
    public var dtype: FloatDType?
    public var maxShardSize: Int
    public var overwrite: Bool
    public var showProgress: Bool?
    /// zstd-compress the output (OP checkpoints: op_model.safetensors.zst).
    public var compress: Bool = false
    /// Rename rules for OP checkpoints saved by other trainers.
    public var keyMap: String?
    /// Adapter inputs: the format to write (nil: the input's own format).
    public var to: AdapterFormatID?
    /// The base model an adapter belongs to (shapes for OP checkpoints, architecture and
    /// head counts for GGUF).
    public var base: String?
    /// Adapter inputs with full-delta modules (LoHa, LoKr, Tucker LoCon, diff): factorize each
    /// by SVD to this rank (or energy) so a LoRA format can hold it.
    public var lowRank: RankTarget?
    /// opconvert's version for the README.md model card of a model directory output; nil: no card.
    public var modelCardVersion: String?

    public init(input: String, output: String, dtype: FloatDType? = nil, maxShardSize: Int = 5_000_000_000,
                overwrite: Bool = false, showProgress: Bool? = nil) {
        self.input = input
        self.output = output
        self.dtype = dtype
        self.maxShardSize = maxShardSize
        self.overwrite = overwrite
        self.showProgress = showProgress
    }
}

public struct ConvertSummary: Codable, Sendable {
    public var input: String
    public var output: String
    public var tensors: Int
    public var castTensors: Int
    public var copiedTensors: Int
    public var inputBytes: Int
    public var outputBytes: Int
    public var files: [String]
    public var seconds: Double
}

public enum Converter {
    /// Output is a single file when its name ends in .safetensors, else a model directory.
    public static func target(for output: String, maxShardSize: Int) -> OutputTarget {
        output.hasSuffix(".safetensors") ? .file(output) : .directory(output, maxShardSize: maxShardSize)
    }

    public static func run(_ options: ConvertOptions) throws -> ConvertSummary {
        let started = Date()
        if let format = AdapterRegistry.format(of: options.input) {
            let to = options.to ?? format.id
            switch (format.id, to) {
            case (.op, .op): return try convertOP(options, started: started)
            case (.peft, .peft) where options.base == nil: return try convertPEFT(options, started: started)
            default: return try convertAdapter(options, from: format, to: to, started: started)
            }
        }
        if options.compress || options.keyMap != nil {
            throw PipelineError.invalidArgument("--compress and --key-map apply to OP checkpoint inputs; \(options.input) is not one")
        }
        if let to = options.to {
            throw PipelineError.invalidArgument("--to \(to.rawValue) applies to adapter inputs; \(options.input) is not an adapter")
        }
        let store = try TensorStore.open(options.input)
        if store.layout == .components {
            throw PipelineError.unsupported("\(options.input): a pipeline directory (model_index.json); convert one component directory (\(store.components.map(\.name).joined(separator: ", "))) at a time")
        }
        var writer = try ModelWriter(rewriting: store, to: target(for: options.output, maxShardSize: options.maxShardSize),
                                     castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        if let version = options.modelCardVersion { writer.setModelCard(modelCard(options, store: store, version: version)) }
        try writer.checkOutput()
        let specs = writer.tensors

        let progress = ProgressBar(label: "convert", totalItems: specs.count, totalBytes: store.totalBytes, enabled: options.showProgress)
        progress.completionPhase = "syncing"
        progress.setPhase("writing")
        var cast = 0
        let chunk = ChunkBuffer()
        let result = try writer.write { spec, sink in
            let entry = store.entry(named: spec.name)!
            if entry.info.dtype != spec.dtype { cast += 1 }
            try chunk.write(entry, of: store, to: spec.dtype, into: sink)
            progress.advance(bytes: entry.info.byteCount)
        }
        progress.finish()
        return ConvertSummary(input: options.input, output: options.output, tensors: specs.count, castTensors: cast,
                              copiedTensors: specs.count - cast, inputBytes: store.totalBytes, outputBytes: result.bytesWritten,
                              files: result.files, seconds: Date().timeIntervalSince(started))
    }

    /// OP checkpoint -> OP checkpoint v1 (renamed by a key map, cast, compressed).
    static func convertOP(_ options: ConvertOptions, started: Date) throws -> ConvertSummary {
        let map = try options.keyMap.map { try KeyMap(path: $0) }
        let checkpoint = try OPCheckpoint(path: options.input, keyMap: map)
        let inputs = [options.input] + checkpoint.store.inputPaths + (options.keyMap.map { [$0] } ?? [])
        try OutputGuard.check(options.output, kind: .directory, policy: OutputPolicy(overwrite: options.overwrite, inputs: inputs))
        let tensors = checkpoint.v1Tensors
        var meta = checkpoint.store.metadata ?? [:]
        meta["format"] = meta["format"] ?? "pt"
        // README, training args and the like travel with the checkpoint; op_config.json is
        // re-written and the weights (plain or .zst) are replaced.
        let carried = TensorStore.auxiliary(in: try FileSystem.list(options.input), weights: [OPConfig.fileName], directory: options.input)
        try OPCheckpointWriter.write(to: options.output, config: checkpoint.config.raw, tensors: tensors, metadata: meta,
                                     dtype: options.dtype?.dtype, compress: options.compress, overwrite: options.overwrite,
                                     inputs: inputs, carrying: carried.map { FileSystem.join(options.input, $0) })
        let cast = options.dtype.map { d in tensors.filter { $0.data.dtype.isCastableFloat && $0.data.dtype != d.dtype }.count } ?? 0
        let weights = FileSystem.join(options.output, OPCheckpoint.weightsName + (options.compress ? ".zst" : ""))
        return ConvertSummary(input: options.input, output: options.output, tensors: tensors.count, castTensors: cast,
                              copiedTensors: tensors.count - cast, inputBytes: checkpoint.store.totalBytes,
                              outputBytes: (try? FileSystem.fileSize(weights)) ?? 0,
                              files: [OPConfig.fileName, FileSystem.split(weights).name] + carried, seconds: Date().timeIntervalSince(started))
    }

    /// PEFT adapter -> PEFT adapter with its tensors cast (config kept as is).
    static func convertPEFT(_ options: ConvertOptions, started: Date) throws -> ConvertSummary {
        if options.compress || options.keyMap != nil {
            throw PipelineError.invalidArgument("--compress and --key-map apply to OP checkpoints, not PEFT adapters")
        }
        _ = try PEFTFormat.open(options.input, options: AdapterOpenOptions())
        let store = try TensorStore.open(FileSystem.join(options.input, "adapter_model.safetensors"))
        // adapter_config.json (kept as is: it says nothing about dtypes), README.md, ...; a
        // store opened from the weights file alone lists none of them.
        let carried = TensorStore.auxiliary(in: try FileSystem.list(options.input), weights: ["adapter_model.safetensors"], directory: options.input)
        let specs = store.outputSpecs(castingTo: options.dtype?.dtype)
        let dir = try OutputDirectory(path: options.output, policy: OutputPolicy(overwrite: options.overwrite, inputs: [options.input] + store.inputPaths),
                                      names: carried)
        let writer = try SafetensorsWriter(path: dir.path("adapter_model.safetensors"), tensors: specs, metadata: ModelWriter.ensureFormat(store.metadata))
        let chunk = ChunkBuffer()
        var cast = 0
        for spec in writer.layout.order {
            let e = store.entry(named: spec.name)!
            if e.info.dtype != spec.dtype { cast += 1 }
            try chunk.write(store.data(e), from: e.info.dtype, to: spec.dtype, count: e.info.elementCount, into: writer)
        }
        try writer.finish()
        for name in carried {
            try FileSystem.copyFile(from: FileSystem.join(options.input, name), to: dir.path(name))
        }
        try dir.commit()
        return ConvertSummary(input: options.input, output: options.output, tensors: specs.count, castTensors: cast,
                              copiedTensors: specs.count - cast, inputBytes: store.totalBytes, outputBytes: writer.layout.fileSize,
                              files: ["adapter_model.safetensors"] + carried, seconds: Date().timeIntervalSince(started))
    }

    /// An adapter into another format (or the same one, re-derived from the neutral form):
    /// opened by its format, written by the target's writer.
    static func convertAdapter(_ options: ConvertOptions, from format: any AdapterFormat.Type, to: AdapterFormatID,
                               started: Date) throws -> ConvertSummary {
        if options.compress { throw PipelineError.invalidArgument("--compress applies to OP checkpoint outputs") }
        let writer = try AdapterRegistry.writer(to, refusal: "\(options.input): cannot convert to \(to.rawValue)")
        let map = try options.keyMap.map { try KeyMap(path: $0) }
        let base = try options.base.map { try TensorStore.open($0) }
        let inputs = [options.input] + (base?.inputPaths ?? []) + (options.keyMap.map { [$0] } ?? [])
        // Output conflicts before any adapter is read or materialized.
        try writer.checkOutput(options.output, policy: OutputPolicy(overwrite: options.overwrite, inputs: inputs))
        var adapter = try format.open(options.input, options: AdapterOpenOptions(base: base, keyMap: map))
        if let target = options.lowRank {
            guard !adapter.deltas.isEmpty else {
                throw PipelineError.invalidArgument("--rank/--energy factorize full-delta modules (LoHa, LoKr, Tucker, diff); \(options.input) has none (resize changes a LoRA's rank)")
            }
            adapter = try DeltaFactorizer.lowRank(adapter, target: target, base: base).adapter
        }
        let files = try writer.write(adapter, to: options.output, options: AdapterWriteOptions(
            dtype: options.dtype?.dtype, overwrite: options.overwrite, inputs: inputs, base: base))
        let tensors = adapter.modules.reduce(0) { $0 + 2 + ($1.magnitude == nil ? 0 : 1) }
        let outputBytes = files.reduce(0) { total, name in
            let p = FileSystem.isDirectory(options.output) ? FileSystem.join(options.output, name) : options.output
            return total + ((try? FileSystem.fileSize(p)) ?? 0)
        }
        let inputBytes = adapter.modules.reduce(0) { total, m in
            total + [m.a, m.b].reduce(0) { $0 + $1.elementCount * ($1.dtype.byteWidth ?? 4) }
        }
        return ConvertSummary(input: options.input, output: options.output, tensors: tensors, castTensors: tensors, copiedTensors: 0,
                              inputBytes: inputBytes, outputBytes: outputBytes, files: files, seconds: Date().timeIntervalSince(started))
    }
}
