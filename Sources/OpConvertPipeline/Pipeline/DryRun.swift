import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// What a merge, convert or materialize would do, resolved without writing anything
/// (`--dry-run`): every output tensor with its dtype in and out and the adapter changes
/// applied to it, the output files with their exact sizes, and the free space check.
public struct DryRunPlan: Codable, Sendable {
    public struct Change: Codable, Sendable {
        public var adapter: String
        public var module: String
        /// "lora", "dora", "replace" (modules_to_save), "bias" or "delta".
        public var kind: String
        /// The factor the change is added with (adapter scaling times --weight); null for replacements.
        public var scale: Double?
    }
    public struct Tensor: Codable, Sendable {
        public var name: String
        public var shape: [Int]
        public var dtypeIn: String
        public var dtypeOut: String
        public var changes: [Change]
    }
    public var dryRun = true
    /// The inputs read (absolute): base or input first, then adapters.
    public var inputs: [String]
    public var output: String
    public var tensors: [Tensor]
    public var files: [PlannedFile]
    public var outputBytes: Int
    /// Free bytes on the output's filesystem (null when it cannot be asked).
    public var availableBytes: Int?

    init(inputs: [String], output: String, tensors: [Tensor], files: [PlannedFile]) throws {
        self.inputs = inputs.map(FileSystem.absolute)
        self.output = FileSystem.absolute(output)
        self.tensors = tensors
        self.files = files
        outputBytes = files.reduce(0) { $0 + $1.bytes }
        availableBytes = OutputSpace.available(for: output)
        try OutputSpace.check(files, output: output, available: availableBytes)
    }

    /// Human form: one line per output tensor that changes or is cast, then the files.
    public func render() -> String {
        var out = "dry run: nothing written\n"
        let shown = tensors.filter { !$0.changes.isEmpty || $0.dtypeIn != $0.dtypeOut }
        let width = min(72, shown.map { $0.name.displayEscaped.count }.max() ?? 6)
        out += "tensors: \(tensors.count), \(shown.count) changed or cast\n"
        for t in shown {
            let name = t.name.displayEscaped
            out += "  " + name.padding(toLength: max(width, name.count), withPad: " ", startingAt: 0)
                + "  " + (t.dtypeIn == t.dtypeOut ? t.dtypeIn : "\(t.dtypeIn) -> \(t.dtypeOut)").padding(toLength: 14, withPad: " ", startingAt: 0)
            out += t.changes.map { c in
                "\(c.kind) \(c.module.displayEscaped)" + (c.scale.map { " x\(JSONWriter.formatDouble($0))" } ?? "")
            }.joined(separator: ", ") + "\n"
        }
        out += "files (\(formatBytes(outputBytes)) in all):\n"
        let byteWidth = files.map { formatBytes($0.bytes).count }.max() ?? 0
        for f in files {
            let size = formatBytes(f.bytes)
            out += "  " + String(repeating: " ", count: byteWidth - size.count) + size + "  " + f.path.displayEscaped + "\n"
        }
        out += "free space: " + (availableBytes.map { "\(formatBytes($0)) on the output's filesystem, enough" } ?? "unknown") + "\n"
        return out
    }
}

extension Merger {
    /// The merge `run` would do, checked as far as it can be without writing: the output
    /// is writable, every adapter opens and every module matches one base tensor.
    public static func dryRun(_ options: MergeOptions) throws -> DryRunPlan {
        let base = try TensorStore.open(options.base)
        if base.layout == .components {
            throw PipelineError.unsupported("\(options.base): --dry-run does not plan merges into pipeline directories yet (run it without --dry-run)")
        }
        let target = Converter.target(for: options.output, maxShardSize: options.maxShardSize)
        var writer = try ModelWriter(rewriting: base, to: target, castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        writer.inputs += options.adapters.map(\.path) + (options.keyMap.map { [$0] } ?? [])
        try writer.checkOutput()
        let keyMap = try options.keyMap.map { try KeyMap(path: $0) }
        var loaded: [(adapter: Adapter, weight: Double)] = []
        var kinds: [String] = []
        for (path, weight) in options.adapters {
            let (adapter, kind) = try AdapterLoader.open(path, base: base, keyMap: keyMap)
            loaded.append((adapter, weight))
            kinds.append(kind)
        }
        // The same plan as the real run, tied embeddings and resized vocabularies included.
        let vocab = try VocabularyTensors.detect(in: base)
        var plan = try MergePlan(base: base, adapters: loaded, vocab: vocab)
        let tie = try TieResolution.resolve(&plan, vocab: vocab, mode: options.tieMode)
        _ = try Merger.applyVocabularyChanges(plan, vocab: vocab, tie: tie, to: &writer)
        if let version = options.modelCardVersion { writer.setModelCard(modelCard(options, base: base, loaded: loaded, kinds: kinds, plan: plan, version: version)) }
        let tensors = writer.tensors.map { spec -> DryRunPlan.Tensor in
            let dtypeIn = plan.entry(named: spec.name)?.info.dtype.rawValue ?? spec.dtype.rawValue
            let changes = (plan.ops[spec.name] ?? []).map { op -> DryRunPlan.Change in
                let adapter = FileSystem.absolute(op.adapter)
                switch op.action {
                case let .lora(m, _, scale, _, _):
                    return .init(adapter: adapter, module: op.module, kind: m.magnitude == nil ? "lora" : "dora", scale: Double(scale))
                case .replace: return .init(adapter: adapter, module: op.module, kind: "replace", scale: nil)
                case let .addBias(_, scale):
                    return .init(adapter: adapter, module: op.module, kind: op.module == spec.name ? "delta" : "bias", scale: Double(scale))
                }
            }
            return .init(name: spec.name, shape: spec.shape, dtypeIn: dtypeIn, dtypeOut: spec.dtype.rawValue, changes: changes)
        }
        return try DryRunPlan(inputs: [options.base] + options.adapters.map(\.path), output: options.output,
                              tensors: tensors, files: writer.plannedFiles())
    }
}

extension Converter {
    /// The conversion `run` would do (model weights and PEFT adapters cast in place);
    /// other adapter conversions are refused (69): their sizes are known only once written.
    public static func dryRun(_ options: ConvertOptions) throws -> DryRunPlan {
        if let format = AdapterRegistry.format(of: options.input) {
            guard format.id == .peft, (options.to ?? .peft) == .peft, options.base == nil, !options.compress, options.keyMap == nil else {
                throw PipelineError.unsupported("\(options.input): --dry-run plans model conversions and PEFT adapter casts; this \(format.id.rawValue) -> \((options.to ?? format.id).rawValue) conversion is not planned (run it without --dry-run)")
            }
            _ = try PEFTFormat.open(options.input, options: AdapterOpenOptions())
            let store = try TensorStore.open(FileSystem.join(options.input, "adapter_model.safetensors"))
            let carried = TensorStore.auxiliary(in: try FileSystem.list(options.input), weights: ["adapter_model.safetensors"], directory: options.input)
            try OutputGuard.check(options.output, kind: .directory, policy: OutputPolicy(overwrite: options.overwrite, inputs: [options.input] + store.inputPaths), names: carried)
            let specs = store.outputSpecs(castingTo: options.dtype?.dtype)
            let root = FileSystem.absolute(options.output)
            let files = [PlannedFile(path: FileSystem.join(root, "adapter_model.safetensors"),
                                     bytes: SafetensorsLayout(tensors: specs, metadata: ModelWriter.ensureFormat(store.metadata)).fileSize)]
                + carried.map { PlannedFile(path: FileSystem.join(root, $0), bytes: (try? FileSystem.fileSize(FileSystem.join(options.input, $0))) ?? 0) }
            return try DryRunPlan(inputs: [options.input], output: options.output, tensors: tensors(specs, store), files: files)
        }
        if options.compress || options.keyMap != nil {
            throw PipelineError.invalidArgument("--compress and --key-map apply to OP checkpoint inputs; \(options.input) is not one")
        }
        if let to = options.to {
            throw PipelineError.invalidArgument("--to \(to.rawValue) applies to adapter inputs; \(options.input) is not an adapter")
        }
        let store = try TensorStore.open(options.input)
        var writer = try ModelWriter(rewriting: store, to: target(for: options.output, maxShardSize: options.maxShardSize),
                                     castingTo: options.dtype?.dtype, overwrite: options.overwrite)
        if let version = options.modelCardVersion { writer.setModelCard(modelCard(options, store: store, version: version)) }
        try writer.checkOutput()
        return try DryRunPlan(inputs: [options.input], output: options.output, tensors: tensors(writer.tensors, store), files: writer.plannedFiles())
    }

    private static func tensors(_ specs: [TensorSpec], _ store: TensorStore) -> [DryRunPlan.Tensor] {
        specs.map { spec in
            .init(name: spec.name, shape: spec.shape, dtypeIn: store.entry(named: spec.name)?.info.dtype.rawValue ?? spec.dtype.rawValue,
                  dtypeOut: spec.dtype.rawValue, changes: [])
        }
    }
}

extension Materializer {
    /// The PEFT adapter `run` would write: each module's tensors and the two files with
    /// their sizes (every module's shape resolved, as the real run does first). Other
    /// --to formats are refused (69).
    public static func dryRun(_ options: MaterializeOptions) throws -> DryRunPlan {
        if let to = options.to, to != .peft {
            throw PipelineError.unsupported("\(options.checkpoint): --dry-run plans PEFT outputs; --to \(to.rawValue) is not planned (run it without --dry-run)")
        }
        let keyMap = try options.keyMap.map { try KeyMap(path: $0) }
        let checkpoint = try OPCheckpoint(path: options.checkpoint, keyMap: keyMap)
        let base = try options.base.map { try TensorStore.open($0) }
        let inputs = [options.checkpoint] + checkpoint.store.inputPaths + (base?.inputPaths ?? []) + (options.keyMap.map { [$0] } ?? [])
        try OutputGuard.check(options.output, kind: .directory, policy: OutputPolicy(overwrite: options.overwrite, inputs: inputs))
        let layouts = try checkpoint.modules.map { try checkpoint.adapterLayout(of: $0, base: base) }
        let dtype = options.dtype.dtype
        let specs = PEFTAdapterWriter.specs(layouts, dtype: dtype)
        let root = FileSystem.absolute(options.output)
        let config = JSONWriter.serialize(checkpoint.materializedPEFTConfig, style: .python(indent: 2, sortKeys: true))
        let files = [PlannedFile(path: FileSystem.join(root, "adapter_model.safetensors"), bytes: SafetensorsLayout(tensors: specs, metadata: ["format": "pt"]).fileSize),
                     PlannedFile(path: FileSystem.join(root, "adapter_config.json"), bytes: config.utf8.count)]
            + modelCardFiles(options, checkpoint: checkpoint, modules: layouts.count).map { PlannedFile(path: FileSystem.join(root, $0.name), bytes: $0.contents.count) }
        let tensors = specs.map { DryRunPlan.Tensor(name: $0.name, shape: $0.shape, dtypeIn: DType.f32.rawValue, dtypeOut: $0.dtype.rawValue, changes: []) }
        return try DryRunPlan(inputs: [options.checkpoint] + (options.base.map { [$0] } ?? []), output: options.output, tensors: tensors, files: files)
    }
}

extension Merger {
    /// The README.md a merge writes (see ModelCard).
    static func modelCard(_ options: MergeOptions, base: TensorStore, loaded: [(adapter: Adapter, weight: Double)], kinds: [String],
                          plan: MergePlan, version: String) -> String {
        let adapters = options.adapters.indices.map { i in
            ModelCard.Adapter(path: options.adapters[i].path, kind: kinds[i], weight: options.adapters[i].weight, modules: plan.moduleCounts[i])
        }
        return ModelCard.render(command: "merge", base: base, basePath: options.base, adapters: adapters, dtype: options.dtype, version: version)
    }
}

extension Converter {
    /// The README.md a model conversion writes (see ModelCard).
    static func modelCard(_ options: ConvertOptions, store: TensorStore, version: String) -> String {
        ModelCard.render(command: "convert", base: store, basePath: options.input, adapters: [], dtype: options.dtype, version: version)
    }
}

extension Materializer {
    /// The README.md a PEFT materialization writes (see ModelCard), when asked for.
    static func modelCardFiles(_ options: MaterializeOptions, checkpoint: OPCheckpoint, modules: Int) -> [(name: String, contents: [UInt8])] {
        guard let version = options.modelCardVersion else { return [] }
        let named = checkpoint.materializedPEFTConfig["base_model_name_or_path"]?.stringValue
        let card = ModelCard.renderAdapter(checkpoint: options.checkpoint, checkpointBytes: checkpoint.store.totalBytes, modules: modules,
                                           dora: checkpoint.isDoRA, base: options.base, namedBase: named, dtype: options.dtype, version: version)
        return [(name: "README.md", contents: Array(card.utf8))]
    }
}
