import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpenBLAS
import Foundation

public struct MergeOptions: Sendable {
    public var base: String
    /// Adapter paths with their weights, applied in this order.
    public var adapters: [(path: String, weight: Double)]
    public var output: String
    public var dtype: FloatDType?
    public var maxShardSize: Int
    public var overwrite: Bool
    /// Refuse non-finite results and zero-norm DoRA rows.
    public var safe: Bool
    public var showProgress: Bool?
    /// Rename rules for OP checkpoints saved by other trainers.
    public var keyMap: String?

    public init(base: String, adapters: [(path: String, weight: Double)], output: String, dtype: FloatDType? = nil,
                maxShardSize: Int = 5_000_000_000, overwrite: Bool = false, safe: Bool = false, showProgress: Bool? = nil) {
        self.base = base
        self.adapters = adapters
        self.output = output
        self.dtype = dtype
        self.maxShardSize = maxShardSize
        self.overwrite = overwrite
        self.safe = safe
        self.showProgress = showProgress
    }
}

public struct MergeSummary: Codable, Sendable {
    public struct Adapter: Codable, Sendable {
        public var path: String
        public var kind: String
        public var weight: Double
        public var modules: Int
    }
    public var base: String
    public var output: String
    public var adapters: [Adapter]
    public var tensors: Int
    public var mergedTensors: Int
    public var copiedTensors: Int
    public var outputBytes: Int
    public var files: [String]
    public var seconds: Double
    public var warnings: [String]
}

/// `opconvert merge`: folds adapters into base weights, one base tensor at a time.
public enum Merger {
    public static func run(_ options: MergeOptions) throws -> MergeSummary {
        // summary.warnings lists this merge's warnings; callers collecting warnings get the
        // same ones, once.
        var (summary, warnings) = try Warnings.collectForwarding { try merge(options) }
        summary.warnings = warnings
        return summary
    }

    private static func merge(_ options: MergeOptions) throws -> MergeSummary {
        let started = Date()
        let base = try TensorStore.open(options.base)
        var writer: any TensorSetWriter
        if base.layout == .components {
            // A pipeline directory is written as one: its changed components rewritten.
            guard !options.output.hasSuffix(".safetensors") else {
                throw PipelineError.invalidArgument("\(options.output): the base \(options.base) is a pipeline directory (model_index.json); its merge is written as a directory, not a .safetensors file")
            }
            writer = ComponentModelWriter(rewriting: base, to: options.output, maxShardSize: options.maxShardSize,
                                          castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        } else {
            let target = Converter.target(for: options.output, maxShardSize: options.maxShardSize)
            writer = try ModelWriter(rewriting: base, to: target, castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        }
        writer.inputs += options.adapters.map(\.path) + (options.keyMap.map { [$0] } ?? [])
        // Before any adapter is read or materialized: the output must be writable.
        try writer.checkOutput()
        var loaded: [(adapter: Adapter, weight: Double)] = []
        var kinds: [String] = []
        let keyMap = try options.keyMap.map { try KeyMap(path: $0) }
        for (path, weight) in options.adapters {
            let (adapter, kind) = try AdapterLoader.open(path, base: base, keyMap: keyMap)
            loaded.append((adapter, weight))
            kinds.append(kind)
            if weight == 0 { Warnings.emit("\(path): --weight 0 given: this adapter has no effect on the output") }
        }
        let plan = try MergePlan(base: base, adapters: loaded)
        if var components = writer as? ComponentModelWriter {
            components.rewriteOnly(componentsOf: plan.ops.keys)
            writer = components
        }
        let specs = writer.tensors
        let progress = ProgressBar(label: "merge", totalItems: specs.count, totalBytes: base.totalBytes, enabled: options.showProgress)
        // The engine splits each GEMM across the cores itself: OpenBLAS's own threads would
        // spin between the many small GEMMs and compete with conversion and writing.
        let blasThreads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(blasThreads) }
        let engine = MergeEngine(safe: options.safe)
        let copier = ChunkBuffer()
        var merged = 0
        let result = try writer.write { spec, sink in
            let entry = base.entry(named: spec.name)!
            if let ops = plan.ops[spec.name] {
                try engine.merge(entry: entry, store: base, ops: ops, outDType: spec.dtype, sink: sink)
                base.files[entry.file].release(entry.info)
                merged += 1
            } else {
                try copier.write(entry, of: base, to: spec.dtype, into: sink)
            }
            progress.advance(bytes: entry.info.byteCount)
        }
        progress.finish()
        if let first = engine.firstNonFinite {
            Warnings.emit("merge result has \(engine.nonFiniteValues) NaN/Inf value\(engine.nonFiniteValues == 1 ? "" : "s") in \(engine.nonFiniteTensors) tensor\(engine.nonFiniteTensors == 1 ? "" : "s"), first in module \(first.module) (tensor \(first.tensor)); --safe refuses such results")
        }
        let adapters = zip(loaded, kinds).enumerated().map { i, pair in
            MergeSummary.Adapter(path: pair.0.adapter.path, kind: pair.1, weight: pair.0.weight, modules: plan.moduleCounts[i])
        }
        return MergeSummary(base: options.base, output: options.output, adapters: adapters, tensors: specs.count,
                            mergedTensors: merged, copiedTensors: specs.count - merged, outputBytes: result.bytesWritten,
                            files: result.files, seconds: Date().timeIntervalSince(started), warnings: [])
    }
}

/// Opens anything `merge` accepts as an adapter: whatever format the registry recognises.
public enum AdapterLoader {
    /// The adapter and its kind ("peft-lora", "op-dora", ...). OP checkpoints are
    /// materialized in memory, with module shapes read from `base`.
    public static func open(_ path: String, base: TensorStore?, keyMap: KeyMap? = nil) throws -> (Adapter, String) {
        let adapter = try AdapterRegistry.open(path, options: AdapterOpenOptions(base: base, keyMap: keyMap))
        return (adapter, adapter.kind.rawValue)
    }
}
