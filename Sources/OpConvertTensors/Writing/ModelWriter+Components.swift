import OpConvertCore

/// What a pipeline step needs of an output writer: the tensors it will be asked for (in the
/// writer's order), the output check, and the streaming write.
public protocol TensorSetWriter {
    var tensors: [TensorSpec] { get }
    var inputs: [String] { get set }
    func checkOutput() throws
    func write(produce: (TensorSpec, TensorSink) throws -> Void) throws -> WriteResult
}

extension ModelWriter: TensorSetWriter {}

/// Writes a multi-component store (`TensorStore.Layout.components`: a diffusers pipeline
/// directory) in its own layout as one output directory: the components that change are
/// rewritten through `ModelWriter` (same weight file stem, their other files carried), every
/// other component directory and top-level file is copied byte for byte. Tensor names given
/// to `produce` are the store's prefixed `<component>/<name>`.
public struct ComponentModelWriter: TensorSetWriter {
    public let store: TensorStore
    public let path: String
    public var maxShardSize: Int
    public var dtype: DType?
    public var overwrite: Bool
    public var inputs: [String]
    /// Components rewritten; nil: all (a cast rewrites every float tensor).
    public private(set) var rewritten: Set<String>

    public init(rewriting store: TensorStore, to path: String, maxShardSize: Int, castingTo dtype: DType?, overwrite: Bool) {
        self.store = store
        self.path = path
        self.maxShardSize = maxShardSize
        self.dtype = dtype
        self.overwrite = overwrite
        inputs = store.inputPaths
        rewritten = Set(store.components.map(\.name))
    }

    /// Rewrites only the components holding one of `tensors` (prefixed names), unless a
    /// cast changes them all.
    public mutating func rewriteOnly(componentsOf tensors: some Sequence<String>) {
        guard dtype == nil else { return }
        rewritten = Set(tensors.compactMap { store.component(of: $0)?.component.name })
    }

    public var policy: OutputPolicy { OutputPolicy(overwrite: overwrite, inputs: inputs) }

    private var topLevelNames: [String] { ((try? FileSystem.list(store.directory)) ?? []).filter { !$0.hasPrefix(".") }.sorted() }

    public func checkOutput() throws {
        try OutputGuard.check(path, kind: .directory, policy: policy, names: topLevelNames)
    }

    /// The rewritten components' tensors, prefixed (as `write` names them).
    public var tensors: [TensorSpec] {
        store.components.filter { rewritten.contains($0.name) }.flatMap { c in c.store.outputSpecs(castingTo: dtype).map { prefixed($0, c) } }
    }

    private func prefixed(_ spec: TensorSpec, _ c: TensorStore.Component) -> TensorSpec {
        var s = spec
        s.name = c.name + "/" + spec.name
        return s
    }

    private func componentWriter(_ c: TensorStore.Component, in directory: String) throws -> ModelWriter {
        var w = try ModelWriter(rewriting: c.store, to: .directory(FileSystem.join(directory, c.name), maxShardSize: maxShardSize),
                                castingTo: dtype, overwrite: false)
        w.weightsStem = c.weightsStem
        // The component is written inside this writer's temporary directory; the input rule
        // is checked for the whole output.
        w.inputs = []
        return w
    }

    public func write(produce: (TensorSpec, TensorSink) throws -> Void) throws -> WriteResult {
        let dir = try OutputDirectory(path: path, policy: policy, names: topLevelNames)
        var files: [String] = []
        var bytes = 0
        for name in topLevelNames {
            let source = FileSystem.join(store.directory, name)
            if let c = store.components.first(where: { $0.name == name }), rewritten.contains(name) {
                let w = try componentWriter(c, in: dir.temporaryPath)
                let result = try w.write { spec, sink in try produce(prefixed(spec, c), sink) }
                files += result.files.map { name + "/" + $0 }
                bytes += result.bytesWritten
            } else if FileSystem.isDirectory(source) {
                try Self.copyTree(source, to: dir.path(name))
            } else if FileSystem.isRegularFile(source) {
                try FileSystem.copyFile(from: source, to: dir.path(name))
            }
        }
        try dir.commit()
        return WriteResult(files: files, bytesWritten: bytes)
    }

    /// Regular files and directories below `source`, copied byte for byte (links and
    /// special files are not followed).
    static func copyTree(_ source: String, to destination: String) throws {
        try FileSystem.makeDirectory(destination)
        for name in try FileSystem.list(source).sorted() {
            let s = FileSystem.join(source, name), d = FileSystem.join(destination, name)
            if FileSystem.isSymbolicLink(s) { continue }
            if FileSystem.isDirectory(s) { try copyTree(s, to: d) } else if FileSystem.isRegularFile(s) { try FileSystem.copyFile(from: s, to: d) }
        }
        FileSystem.syncDirectory(destination)
    }
}
