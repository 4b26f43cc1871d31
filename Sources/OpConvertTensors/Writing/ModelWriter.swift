import OpConvertCore

/// Where a pipeline writes its tensors.
public enum OutputTarget: Sendable {
    /// One .safetensors file.
    case file(String)
    /// A model directory: shards of at most `maxShardSize` bytes plus an index (or one
    /// `model.safetensors` when everything fits), with the source's other files copied.
    case directory(String, maxShardSize: Int)

    public var path: String {
        switch self {
        case let .file(p), let .directory(p, _): return p
        }
    }
}

/// What a pipeline step hands the writer for each output tensor, in the writer's order.
public protocol TensorSink {
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// For bytes that stay valid until the file is finished (mapped inputs): may be written
    /// later without a copy; `after` runs once they are.
    func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws
    /// Lets the producer write straight into the output's buffer: `fill` gets room for a
    /// whole number of `granule`-byte units (at least one, at most `maxCount` bytes) and
    /// must fill all of it. Returns the bytes taken.
    func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int
}

extension SafetensorsWriter: TensorSink {}

public struct WriteResult: Sendable {
    public var files: [String]
    public var bytesWritten: Int
}

/// Writes a set of tensors to an `OutputTarget`: plans the shards, streams each tensor
/// through `produce` (called once per tensor, in file order, so memory stays bounded),
/// writes the index and carries the auxiliary files, then moves the result into place.
public struct ModelWriter {
    public var target: OutputTarget
    public var tensors: [TensorSpec]
    public var metadata: [String: String]?
    public var overwrite: Bool
    /// Paths the command reads (see `OutputPolicy`); the output keeps clear of them.
    public var inputs: [String] = []
    /// Extra members kept in the index's "metadata" besides total_size.
    public var indexMetadata: [(String, JSONValue)] = []
    /// Files copied into an output directory: (source path, name in output, replacement bytes).
    public var extraFiles: [(source: String?, name: String, contents: [UInt8]?)] = []
    /// Stem of a directory output's weight files: `<stem>.safetensors`, `<stem>-00001-of-...`
    /// and `<stem>.safetensors.index.json` (diffusers loads `diffusion_pytorch_model`).
    public var weightsStem = "model"

    public init(target: OutputTarget, tensors: [TensorSpec], metadata: [String: String]?, overwrite: Bool) {
        self.target = target
        self.tensors = tensors
        self.metadata = metadata
        self.overwrite = overwrite
    }

    /// A writer for a store's tensors (floats cast to `dtype` when given) that keeps its
    /// metadata, its index metadata and, for directories, its other files.
    public init(rewriting store: TensorStore, to target: OutputTarget, castingTo dtype: DType?, overwrite: Bool) throws {
        self.init(target: target, tensors: store.outputSpecs(castingTo: dtype), metadata: Self.ensureFormat(store.metadata),
                  overwrite: overwrite)
        if case .directory = target {
            extraFiles = try Self.carriedFiles(from: store, castTo: dtype)
            indexMetadata = store.indexMetadata?.objectValue ?? []
        }
        inputs = store.inputPaths
    }

    public var policy: OutputPolicy { OutputPolicy(overwrite: overwrite, inputs: inputs) }

    /// Checks the output before any work is done (the writer checks again when it starts
    /// and before it renames the result into place).
    public func checkOutput() throws {
        switch target {
        case let .file(path): try OutputGuard.check(path, kind: .safetensorsFile, policy: policy)
        case let .directory(path, _): try OutputGuard.check(path, kind: .directory, policy: policy, names: extraFiles.map(\.name))
        }
    }

    public func write(produce: (TensorSpec, TensorSink) throws -> Void) throws -> WriteResult {
        switch target {
        case let .file(path):
            let writer = try SafetensorsWriter(path: path, tensors: tensors, metadata: metadata, background: true, policy: policy)
            for spec in writer.layout.order { try produce(spec, writer) }
            try writer.finish()
            return WriteResult(files: [path], bytesWritten: writer.layout.fileSize)

        case let .directory(path, maxShardSize):
            let plan = ShardPlanner.plan(sizes: tensors.map(\.byteCount), maxShardSize: maxShardSize)
            let names = ShardPlanner.shardNames(prefix: weightsStem, count: plan.count)
            let dir = try OutputDirectory(path: path, policy: policy, names: extraFiles.map(\.name))
            var weightMap: [String: String] = [:]
            var total = 0
            var written = 0
            for (shard, members) in plan.enumerated() {
                let specs = members.map { tensors[$0] }
                let writer = try SafetensorsWriter(path: dir.path(names[shard]), tensors: specs, metadata: metadata, background: true)
                for spec in writer.layout.order {
                    try produce(spec, writer)
                    weightMap[spec.name] = names[shard]
                    total += spec.byteCount
                }
                try writer.finish(sync: false)
                written += writer.layout.fileSize
            }
            if plan.count > 1 {
                let text = ShardIndex.render(weightMap: weightMap, totalSize: total, extraMetadata: indexMetadata)
                let index = try OutputFile(path: dir.path(weightsStem + ".safetensors.index.json"))
                try index.write(Array(text.utf8))
                try index.commit(sync: false)
            }
            for file in extraFiles {
                if let contents = file.contents {
                    let f = try OutputFile(path: dir.path(file.name))
                    try f.write(contents)
                    try f.commit(sync: false)
                } else if let source = file.source {
                    try FileSystem.copyFile(from: source, to: dir.path(file.name))
                }
            }
            // One sync of the finished directory's files before it becomes visible.
            for name in (try? FileSystem.list(dir.temporaryPath)) ?? [] {
                try fsyncFile(dir.path(name))
            }
            try dir.commit()
            return WriteResult(files: names + (plan.count > 1 ? [weightsStem + ".safetensors.index.json"] : []), bytesWritten: written)
        }
    }
}

/// Errors of the pipeline steps (convert, merge, materialize) that are not about a
/// particular input format.
public enum PipelineError: CategorizedError {
    case outputExists(String)
    case outputIsInput(String)
    case invalidArgument(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .outputExists(p): return "\(p): output already exists (pass --overwrite to replace it)"
        case let .outputIsInput(p): return "\(p): output would overwrite the input"
        case let .invalidArgument(m): return m
        case let .unsupported(m): return m
        }
    }

    public var category: ErrorCategory {
        switch self {
        case .outputExists, .outputIsInput: return .outputConflict
        case .invalidArgument: return .usage
        case .unsupported: return .unsupported
        }
    }
}
