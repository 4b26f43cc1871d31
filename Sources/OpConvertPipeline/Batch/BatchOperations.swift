import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// A command's options as a batch job builds them: decoded from a manifest line's `args`,
/// with what the fingerprint and the checks before the run need.
package protocol BatchOperationOptions: Sendable {
    /// Reads `args` (the CLI's option names) into the options; `output` is the job's
    /// resolved output. Unknown keys are refused by the caller (`BatchArgs.finish`).
    init(batch args: inout BatchArgs, output: String) throws
    /// Every path the job reads (files or directories), in a fixed order.
    var batchInputs: [String] { get }
    var batchOverwrite: Bool { get }
    /// The options that decide the output's bytes, normalized (defaults filled in, paths
    /// resolved), for the fingerprint. Progress and other display settings stay out.
    var batchNormalized: [(String, JSONValue)] { get }
    /// A rough upper bound of the job's resident memory in bytes (see BatchRunner).
    var batchMemoryEstimate: Int { get }
}

/// A job ready to run: its options decoded, its library call bound.
package struct PreparedBatchJob: Sendable {
    var inputs: [String]
    var overwrite: Bool
    var normalized: [(String, JSONValue)]
    var memoryEstimate: Int
    var run: @Sendable () throws -> Void
}

/// One batch operation: its name and how a manifest line becomes the library call the
/// command of that name makes.
public struct BatchOperation: Sendable {
    public let name: String
    let prepare: @Sendable (inout BatchArgs, String) throws -> PreparedBatchJob

    /// The registration of a command: its options type (decoded from `args`) and its
    /// library call. Adding an operation to batch is one line in `BatchOperations.all`.
    package static func op<Options: BatchOperationOptions>(
        _ name: String, _ type: Options.Type, _ call: @escaping @Sendable (Options) throws -> Void
    ) -> BatchOperation {
        BatchOperation(name: name) { args, output in
            let options = try Options(batch: &args, output: output)
            try args.finish()
            return PreparedBatchJob(inputs: options.batchInputs, overwrite: options.batchOverwrite,
                                    normalized: options.batchNormalized, memoryEstimate: options.batchMemoryEstimate,
                                    run: { try call(options) })
        }
    }
}

public enum BatchOperations {
    /// The operations a manifest's "op" may name (inspect has no output, so no job to run).
    public static let all: [BatchOperation] = [
        .op("merge", MergeOptions.self) { _ = try Merger.run($0) },
        .op("materialize", MaterializeOptions.self) { _ = try Materializer.run($0) },
        .op("convert", ConvertOptions.self) { _ = try Converter.run($0) },
        .op("extract", ExtractOptions.self) { _ = try Extractor.run($0) },
        .op("resize", ResizeOptions.self) { _ = try Resizer.run($0) },
        .op("combine", CombineOptions.self) { _ = try Combiner.run($0) },
    ]

    public static func named(_ name: String) -> BatchOperation? { all.first { $0.name == name } }
}

/// Working memory of one job besides what it loads whole: the merge's row blocks, the
/// writer's slots and buffers (the commands stream tensors through these).
let batchStreamingBuffers = 256 << 20

/// Bytes of the regular files at `path` (a file, or a directory's top-level files).
func batchInputBytes(_ path: String) -> Int {
    guard FileSystem.isDirectory(path) else { return (try? FileSystem.fileSize(path)) ?? 0 }
    let names = (try? FileSystem.list(path)) ?? []
    return names.reduce(0) { total, name in
        let p = FileSystem.join(path, name)
        return total + (FileSystem.isRegularFile(p) ? ((try? FileSystem.fileSize(p)) ?? 0) : 0)
    }
}

extension MergeOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        let base = try args.requiredPath("base")
        guard let list = args.raw("adapters")?.arrayValue, !list.isEmpty else {
            throw args.error("\"adapters\" is a non-empty array of paths or {\"path\": ..., \"weight\": ...} objects")
        }
        var adapters: [(path: String, weight: Double?)] = []
        for (i, item) in list.enumerated() {
            if let s = item.stringValue, !s.isEmpty {
                adapters.append((args.resolvePath(s), nil))
            } else if let members = item.objectValue, let p = item["path"]?.stringValue, !p.isEmpty,
                      members.allSatisfy({ ["path", "weight"].contains($0.0) }) {
                var weight: Double?
                if let w = item["weight"] {
                    guard let d = w.doubleValue, d.isFinite else { throw args.error("adapters[\(i)].weight is a finite number") }
                    weight = d
                }
                adapters.append((args.resolvePath(p), weight))
            } else {
                throw args.error("adapters[\(i)] is a path or an object {\"path\": ..., \"weight\": ...} (no other keys)")
            }
        }
        var weights: [Double]?
        if let w = args.raw("weight") {
            let values = w.arrayValue ?? [w]
            let numbers = values.compactMap { $0.doubleValue }.filter(\.isFinite)
            guard numbers.count == values.count else { throw args.error("\"weight\" is a finite number or an array of them") }
            guard numbers.count == adapters.count else {
                throw args.error("\"weight\" has \(numbers.count) values for \(adapters.count) adapters; give one per adapter or none")
            }
            if adapters.contains(where: { $0.weight != nil }) {
                throw args.error("give weights either in \"weight\" or in the adapters' objects, not both")
            }
            weights = numbers
        }
        let resolved = adapters.enumerated().map { i, a in (path: a.path, weight: weights?[i] ?? a.weight ?? 1.0) }
        self.init(base: base, adapters: resolved, output: output, dtype: try args.floatDType("dtype"),
                  maxShardSize: try args.byteSize("max_shard_size") ?? 5_000_000_000,
                  overwrite: try args.bool("overwrite") ?? false, safe: try args.bool("safe") ?? false, showProgress: false)
        keyMap = try args.path("key_map")
        if let mode = try args.string("tie_mode") {
            guard let m = TieMode(rawValue: mode) else {
                throw args.error("\"tie_mode\" is one of \(TieMode.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(mode.displayEscaped)\"")
            }
            tieMode = m
        }
    }

    package var batchInputs: [String] { [base] + adapters.map(\.path) + (keyMap.map { [$0] } ?? []) }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] {
        [("base", .string(base)),
         ("adapters", .array(adapters.map { .object([("path", .string($0.path)), ("weight", .double($0.weight))]) })),
         ("dtype", dtype.map { .string($0.rawValue) } ?? .null), ("max_shard_size", .int(Int64(maxShardSize))),
         ("key_map", keyMap.map { .string($0) } ?? .null), ("safe", .bool(safe)), ("tie_mode", .string(tieMode.rawValue))]
    }
    // Adapters are read whole (and widened to f32); the base streams.
    package var batchMemoryEstimate: Int { batchStreamingBuffers + adapters.reduce(0) { $0 + 2 * batchInputBytes($1.path) } }
}

extension MaterializeOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        self.init(checkpoint: try args.requiredPath("checkpoint"), output: output, dtype: try args.floatDType("dtype") ?? .f32,
                  base: try args.path("base"), keyMap: try args.path("key_map"), overwrite: try args.bool("overwrite") ?? false)
        to = try args.adapterFormat("to")
    }

    package var batchInputs: [String] { [checkpoint] + (base.map { [$0] } ?? []) + (keyMap.map { [$0] } ?? []) }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] {
        [("checkpoint", .string(checkpoint)), ("dtype", .string(dtype.rawValue)), ("base", base.map { .string($0) } ?? .null),
         ("key_map", keyMap.map { .string($0) } ?? .null), ("to", .string((to ?? .peft).rawValue))]
    }
    // The hypernetworks and the adapter they produce are held whole.
    package var batchMemoryEstimate: Int { batchStreamingBuffers + 4 * batchInputBytes(checkpoint) }
}

extension ConvertOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        let shard = try args.byteSize("max_shard_size")
        if output.hasSuffix(".safetensors") && shard != nil {
            throw args.error("\"max_shard_size\" applies to directory outputs; the output ends in .safetensors, which is one file")
        }
        self.init(input: try args.requiredPath("input"), output: output, dtype: try args.floatDType("dtype"),
                  maxShardSize: shard ?? 5_000_000_000, overwrite: try args.bool("overwrite") ?? false, showProgress: false)
        compress = try args.bool("compress") ?? false
        keyMap = try args.path("key_map")
        to = try args.adapterFormat("to")
        base = try args.path("base")
        lowRank = try args.rankTarget(required: false)
        if lowRank != nil && to == nil { throw args.error("\"rank\"/\"energy\" factorize full-delta modules for \"to\"; give \"to\"") }
    }

    package var batchInputs: [String] { [input] + (keyMap.map { [$0] } ?? []) + (base.map { [$0] } ?? []) }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] {
        [("input", .string(input)), ("dtype", dtype.map { .string($0.rawValue) } ?? .null),
         ("max_shard_size", .int(Int64(maxShardSize))), ("compress", .bool(compress)),
         ("key_map", keyMap.map { .string($0) } ?? .null), ("to", to.map { .string($0.rawValue) } ?? .null),
         ("base", base.map { .string($0) } ?? .null)] + lowRankNormalized
    }
    // Only when given, so convert jobs written before these keys keep their fingerprints.
    private var lowRankNormalized: [(String, JSONValue)] {
        switch lowRank {
        case let .rank(r)?: return [("rank", .int(Int64(r)))]
        case let .energy(e)?: return [("energy", .double(e))]
        case nil: return []
        }
    }
    // Models stream; adapters and OP checkpoints are read whole.
    package var batchMemoryEstimate: Int {
        let adapterLike = ["adapter_config.json", "op_config.json"].contains { FileSystem.exists(FileSystem.join(input, $0)) }
        return batchStreamingBuffers + (adapterLike ? 2 * batchInputBytes(input) : 0)
    }
}
