import OpConvertCore

extension TensorStore {
    /// What the store reads, for the output rule: the path the user named, the files behind
    /// it and, when the user named a directory or an index, the auxiliary files carried.
    public var inputPaths: [String] {
        var paths = [path] + files.map(\.path)
        if case let .sharded(indexName) = layout { paths.append(FileSystem.join(directory, indexName)) }
        paths += auxiliaryFiles.map { FileSystem.join(directory, $0) }
        paths += components.flatMap { $0.store.inputPaths }
        return paths
    }
}
