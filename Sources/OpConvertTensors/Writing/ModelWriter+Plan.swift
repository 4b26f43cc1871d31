import OpConvertCore

/// One file an output will hold, with its size, known before anything is written.
public struct PlannedFile: Codable, Sendable, Equatable {
    public var path: String
    public var bytes: Int
    public init(path: String, bytes: Int) {
        self.path = path
        self.bytes = bytes
    }
}

/// The output's filesystem has less room than the output needs (exit 74).
public struct OutputSpaceError: CategorizedError, Sendable, Equatable {
    public var path: String
    public var needed: Int
    public var available: Int
    public var category: ErrorCategory { .io }
    public var description: String {
        "\(path): the output needs \(formatBytes(needed)) (\(needed) bytes), \(formatBytes(available)) (\(available) bytes) free on its filesystem"
    }
}

public enum OutputSpace {
    /// Free bytes on the filesystem an output at `path` would be written to (its nearest
    /// existing ancestor's), or nil when unknown.
    public static func available(for path: String) -> Int? {
        var dir = FileSystem.split(FileSystem.absolute(path)).directory
        while !FileSystem.isDirectory(dir) && dir != "/" { dir = FileSystem.split(dir).directory }
        return POSIX.availableBytes(dir)
    }

    /// Throws when the files need more than is free (`available` nil: asked of the
    /// filesystem; unknown counts as enough).
    public static func check(_ files: [PlannedFile], output: String, available: Int? = nil) throws {
        let needed = files.reduce(0) { $0 + $1.bytes }
        guard let free = available ?? Self.available(for: output), needed > free else { return }
        throw OutputSpaceError(path: output, needed: needed, available: free)
    }
}

extension ModelWriter {
    /// The files `write` will produce, each with its exact size: shards (headers
    /// included), the index, and the carried files.
    public func plannedFiles() -> [PlannedFile] {
        switch target {
        case let .file(path):
            return [PlannedFile(path: FileSystem.absolute(path), bytes: SafetensorsLayout(tensors: tensors, metadata: metadata).fileSize)]
        case let .directory(path, maxShardSize):
            let root = FileSystem.absolute(path)
            let plan = ShardPlanner.plan(sizes: tensors.map(\.byteCount), maxShardSize: maxShardSize)
            let names = ShardPlanner.shardNames(prefix: "model", count: plan.count)
            var files: [PlannedFile] = []
            var weightMap: [String: String] = [:]
            var total = 0
            for (shard, members) in plan.enumerated() {
                let specs = members.map { tensors[$0] }
                files.append(PlannedFile(path: FileSystem.join(root, names[shard]), bytes: SafetensorsLayout(tensors: specs, metadata: metadata).fileSize))
                for spec in specs {
                    weightMap[spec.name] = names[shard]
                    total += spec.byteCount
                }
            }
            if plan.count > 1 {
                let text = ShardIndex.render(weightMap: weightMap, totalSize: total, extraMetadata: indexMetadata)
                files.append(PlannedFile(path: FileSystem.join(root, "model.safetensors.index.json"), bytes: text.utf8.count))
            }
            for file in extraFiles {
                let bytes = file.contents?.count ?? file.source.flatMap { try? FileSystem.fileSize($0) } ?? 0
                files.append(PlannedFile(path: FileSystem.join(root, file.name), bytes: bytes))
            }
            return files
        }
    }
}
