import OpConvertCore

/// A set of tensors that reads as one: a single .safetensors file, a sharded index, or a
/// model directory (config.json + weights). Files are memory-mapped; nothing is copied.
public final class TensorStore: Sendable {
    public struct Entry: Sendable {
        public var info: TensorInfo
        /// Index into `files`.
        public var file: Int
    }

    public enum Layout: Sendable, Equatable {
        case singleFile
        case sharded(indexName: String)
        /// Several model directories read as one (a diffusers pipeline): names are
        /// `<component>/<tensor>`; see `components`.
        case components
    }

    /// The directory holding the weights (the file's directory for a single file).
    public let directory: String
    /// What the user named.
    public let path: String
    public let layout: Layout
    public let files: [SafetensorsFile]
    /// All tensors, in storage order (file by file, by offset within each).
    public let entries: [Entry]
    /// The sharded index's "metadata" (nil for a single file).
    public let indexMetadata: JSONValue?
    /// Regular files in `directory` that are not weights (config, tokenizer, README, ...),
    /// to be carried over to outputs. Empty when a single file was named directly.
    public let auxiliaryFiles: [String]
    /// The parts of a `.components` store, in order (their entries, prefixed, make `entries`).
    public let components: [Component]
    private let byName: [String: Int]

    public var tensorCount: Int { entries.count }
    public var totalBytes: Int { entries.reduce(0) { $0 + $1.info.byteCount } }
    /// `__metadata__` of the first file (shards of one model carry the same).
    public var metadata: [String: String]? { files.first?.metadata }

    public func entry(named name: String) -> Entry? { byName[name].map { entries[$0] } }
    public func contains(_ name: String) -> Bool { byName[name] != nil }
    public func data(_ entry: Entry) -> UnsafeRawBufferPointer { files[entry.file].data(entry.info) }

    /// Every tensor as it will be written, floats cast to `dtype` when given.
    public func outputSpecs(castingTo dtype: DType?) -> [TensorSpec] {
        entries.map { TensorSpec(name: $0.info.name, dtype: $0.info.dtype.casting(to: dtype), shape: $0.info.shape) }
    }
    public func fileName(_ entry: Entry) -> String { files[entry.file].path }

    /// Opens a .safetensors file, a *.safetensors.index.json, or a directory holding either.
    public static func open(_ path: String) throws -> TensorStore {
        guard FileSystem.exists(path) else { throw InputError.notFound(path: path, expected: InputCheck.tensorsExpected) }
        if FileSystem.isDirectory(path) {
            // Adapters, OP checkpoints and directories without weights are refused by name.
            if FileSystem.isRegularFile(FileSystem.join(path, Component.pipelineIndex)) { return try openComponents(path) }
            try InputCheck.requireModelDirectory(path)
            let names = try FileSystem.list(path)
            if let index = names.first(where: { $0 == "model.safetensors.index.json" })
                ?? names.first(where: { $0.hasSuffix(".safetensors.index.json") }) {
                return try openIndex(FileSystem.join(path, index), userPath: path)
            }
            let weights = names.filter { $0.hasSuffix(".safetensors") && !$0.hasPrefix(".") }
            if weights.count == 1 {
                return try openSingle(FileSystem.join(path, weights[0]), directory: path, userPath: path, listing: names)
            }
            if weights.isEmpty {
                throw SafetensorsError.invalidIndex(file: path, reason: "no .safetensors file or model.safetensors.index.json in this directory")
            }
            throw SafetensorsError.invalidIndex(file: path, reason: "several .safetensors files (\(weights.joined(separator: ", "))) and no index json naming the shards")
        }
        guard FileSystem.isRegularFile(path) else {
            throw InputError.wrongKind(path: path, problem: "\(InputKind.of(path).phrase), expected \(InputCheck.tensorsExpected)")
        }
        if path.hasSuffix(".index.json") { return try openIndex(path, userPath: path) }
        return try openSingle(path, directory: FileSystem.split(path).directory, userPath: path, listing: nil)
    }

    static func openSingle(_ file: String, directory: String, userPath: String, listing: [String]?) throws -> TensorStore {
        let f: SafetensorsFile
        do {
            f = try SafetensorsFile.open(file)
        } catch let error as SafetensorsError {
            throw InputCheck.notSafetensors(file, error: error) ?? error
        } catch let error as ZstdError {
            throw InputCheck.notZstd(file, error: error) ?? error
        }
        let entries = f.tensors.map { Entry(info: $0, file: 0) }
        let aux = listing.map { auxiliary(in: $0, weights: [FileSystem.split(file).name], directory: directory) } ?? []
        return TensorStore(directory: directory, path: userPath, layout: .singleFile, files: [f],
                           entries: entries, indexMetadata: nil, auxiliaryFiles: aux)
    }

    static func openIndex(_ indexPath: String, userPath: String) throws(SafetensorsError) -> TensorStore {
        let index = try ShardIndex.read(path: indexPath)
        let directory = FileSystem.split(indexPath).directory
        var files: [SafetensorsFile] = []
        var fileOf: [String: Int] = [:]
        for shard in index.shards {
            let p = FileSystem.join(directory, shard)
            guard FileSystem.isRegularFile(p) else {
                throw .invalidIndex(file: indexPath, reason: "shard \"\(shard)\" named in weight_map does not exist")
            }
            fileOf[shard] = files.count
            files.append(try SafetensorsFile(path: p))
        }
        var listed: [String: String] = [:]
        for (tensor, shard) in index.weightMap {
            listed[tensor] = shard
            guard files[fileOf[shard]!].header.tensor(named: tensor) != nil else {
                throw .invalidIndex(file: indexPath, reason: "tensor \"\(tensor)\" is mapped to \(shard), which does not contain it")
            }
        }
        var entries: [Entry] = []
        var seen: [String: String] = [:]
        for (i, f) in files.enumerated() {
            let shard = FileSystem.split(f.path).name
            for t in f.tensors {
                if let other = seen[t.name] {
                    throw .duplicateTensor(tensor: t.name, files: [other, f.path])
                }
                seen[t.name] = f.path
                guard listed[t.name] == shard else {
                    throw .invalidIndex(file: indexPath, reason: "tensor \"\(t.name)\" in shard \(shard) is not listed in weight_map")
                }
                entries.append(Entry(info: t, file: i))
            }
        }
        let names: [String]
        do { names = try FileSystem.list(directory) } catch { throw .io(error) }
        let aux = auxiliary(in: names, weights: index.shards + [FileSystem.split(indexPath).name], directory: directory)
        return TensorStore(directory: directory, path: userPath, layout: .sharded(indexName: FileSystem.split(indexPath).name),
                           files: files, entries: entries, indexMetadata: index.metadata, auxiliaryFiles: aux)
    }

    /// Files worth carrying to an output: regular, not hidden, and not weights in any format
    /// (stale .bin or other shards would shadow the new weights).
    package static func auxiliary(in names: [String], weights: [String], directory: String) -> [String] {
        let weightSet = Set(weights)
        return names.filter { name in
            if weightSet.contains(name) || name.hasPrefix(".") { return false }
            if isWeightFileName(name) { return false }
            return FileSystem.isRegularFile(FileSystem.join(directory, name))
        }
    }

    public static func isWeightFileName(_ name: String) -> Bool {
        let suffixes = [".safetensors", ".safetensors.index.json", ".bin.index.json", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors.zst"]
        if suffixes.contains(where: { name.hasSuffix($0) }) { return true }
        return name.hasSuffix(".bin") && (name.hasPrefix("pytorch_model") || name.hasPrefix("adapter_model") || name.hasPrefix("model"))
    }

    init(directory: String, path: String, layout: Layout, files: [SafetensorsFile], entries: [Entry],
         indexMetadata: JSONValue?, auxiliaryFiles: [String], components: [Component] = []) {
        self.components = components
        self.directory = directory
        self.path = path
        self.layout = layout
        self.files = files
        self.entries = entries
        self.indexMetadata = indexMetadata
        self.auxiliaryFiles = auxiliaryFiles
        var byName: [String: Int] = [:]
        for (i, e) in entries.enumerated() { byName[e.info.name] = i }
        self.byName = byName
    }
}
