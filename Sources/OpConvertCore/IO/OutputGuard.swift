#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What an output is; it decides what an existing output of that name may be replaced by.
public enum OutputKind: Sendable, Equatable {
    /// A .safetensors file (an existing one is replaced only if it is a safetensors file).
    case safetensorsFile
    /// A text file written whole (CSV, Markdown, SVG, JSON).
    case textFile
    /// A directory of files opconvert writes (model, adapter, OP checkpoint, sweep).
    case directory
    /// A GGUF file (an existing one is replaced only if it starts with "GGUF").
    case ggufFile
}

/// How a command may write an output: whether an existing one may be replaced, and the
/// inputs that the output must keep clear of (it may not be one, hold one, or lie in one).
public struct OutputPolicy: Sendable {
    public var overwrite: Bool
    /// Every path the command reads: base, adapters, --base, --key-map, --data, --init,
    /// plugin, shards. Files and directories alike.
    public var inputs: [String]

    public init(overwrite: Bool = false, inputs: [String] = []) {
        self.overwrite = overwrite
        self.inputs = inputs
    }
}

/// Why an output cannot be written. Exit status 73 (cannot create).
public enum OutputError: CategorizedError, Equatable {
    case exists(String)
    case isInput(output: String, input: String)
    case containsInput(output: String, input: String)
    case insideInput(output: String, input: String)
    /// An existing path that --overwrite may not replace, with why and the entries at fault.
    case notReplaceable(String, reason: String, entries: [String])
    case parentNotDirectory(output: String, parent: String)
    case duplicate(String)
    case nestedOutputs(inner: String, outer: String)

    public var category: ErrorCategory { .outputConflict }

    public var description: String {
        switch self {
        case let .exists(p):
            return "\(p): output already exists (pass --overwrite to replace it)"
        case let .isInput(o, i):
            return "\(o): output is the input \(i); choose another output path"
        case let .containsInput(o, i):
            return "\(o): output would hold the input \(i); choose another output path"
        case let .insideInput(o, i):
            return "\(o): output lies inside the input \(i); choose a path outside it"
        case let .notReplaceable(p, reason, entries):
            let shown = entries.prefix(8).joined(separator: ", ") + (entries.count > 8 ? ", and \(entries.count - 8) more" : "")
            return "\(p): --overwrite refused: \(reason)" + (entries.isEmpty ? "" : " (\(shown))")
        case let .parentNotDirectory(o, parent):
            return "\(o): cannot create the output: \(parent) is not a directory"
        case let .duplicate(p):
            return "\(p): given as two of this command's outputs"
        case let .nestedOutputs(inner, outer):
            return "\(inner): output lies inside another output of this command, \(outer)"
        }
    }
}

/// The one rule every command's outputs follow (merge, materialize, convert, train, sweeps):
/// an output is never an input, never holds one and never lies inside one (paths resolved,
/// device and inode compared), and `--overwrite` replaces only what opconvert could have
/// written.
public enum OutputGuard {
    /// Names opconvert writes into output directories (besides the run's own files): weights,
    /// indexes, configs, tokenizer files, sweep tables.
    static let standardNames: Set<String> = [
        "config.json", "generation_config.json", "adapter_config.json", "op_config.json",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
        "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
        "preprocessor_config.json", "sweep.csv", "sweep.md", "sweep.svg",
        OutputInstallHook.batchRecordName,
    ]

    static func isStandardName(_ name: String) -> Bool {
        standardNames.contains(name) || name.hasSuffix(".safetensors") || name.hasSuffix(".safetensors.zst")
            || name.hasSuffix(".safetensors.index.json")
    }

    /// Checks an output before anything is written (and again before it is renamed into
    /// place). `names` are the files this run puts in a directory output: an existing
    /// directory may hold those and opconvert's standard names, nothing else.
    public static func check(_ path: String, kind: OutputKind, policy: OutputPolicy, names: [String] = []) throws(OutputError) {
        try checkInputs(path, inputs: policy.inputs)
        guard let st = POSIX.lstat(path) else {
            // Absent: its parent must be (or become) a directory.
            if errno == ENOTDIR { throw .parentNotDirectory(output: path, parent: nearestNonDirectory(above: path)) }
            return
        }
        guard policy.overwrite else { throw .exists(path) }
        try checkReplaceable(path, st, kind: kind, names: Set(names))
    }

    /// Refuses a command's outputs that are, hold, or lie inside one another.
    public static func checkDistinct(_ outputs: [String]) throws(OutputError) {
        let resolved = outputs.map { FileSystem.canonical(FileSystem.absolute($0)) ?? FileSystem.absolute($0) }
        for i in resolved.indices {
            for j in resolved.indices where j != i {
                if resolved[i] == resolved[j] { throw .duplicate(outputs[j]) }
                if resolved[j].hasPrefix(resolved[i] + "/") { throw .nestedOutputs(inner: outputs[j], outer: outputs[i]) }
            }
        }
    }

    /// Refuses outputs that are, hold, or lie inside an input.
    static func checkInputs(_ output: String, inputs: [String]) throws(OutputError) {
        let outID = FileID(path: output)
        // The output's resolved location: its nearest existing ancestor, resolved.
        let outAncestors = ancestorIDs(of: nearestExisting(output))
        let ids = inputs.map { (path: $0, id: FileID(path: $0)) }
        // The most direct relation first: being an input beats holding or lying in one.
        if let outID, let hit = ids.first(where: { $0.id == outID }) { throw .isInput(output: output, input: hit.path) }
        if let outID, let hit = ids.first(where: { $0.id != nil && FileSystem.canonical($0.path).map { ancestorIDs(of: $0).contains(outID) } == true }) {
            throw .containsInput(output: output, input: hit.path)
        }
        if let hit = ids.first(where: { $0.id?.isDirectory == true && outAncestors.contains($0.id!) }) {
            throw .insideInput(output: output, input: hit.path)
        }
    }

    static func checkReplaceable(_ path: String, _ st: stat, kind: OutputKind, names: Set<String>) throws(OutputError) {
        let type = st.st_mode & S_IFMT
        if type == S_IFLNK { throw .notReplaceable(path, reason: "it is a symbolic link, which opconvert does not write", entries: []) }
        switch kind {
        case .safetensorsFile, .textFile, .ggufFile:
            guard type == S_IFREG else {
                throw .notReplaceable(path, reason: "it is \(describe(type)), not a file opconvert writes", entries: [])
            }
            let sniff = readPrefix(path, count: kind == .textFile ? 65536 : 9)
            if kind == .ggufFile && !sniff.starts(with: Array("GGUF".utf8)) {
                throw .notReplaceable(path, reason: "it is not a GGUF file", entries: [])
            }
            if kind == .safetensorsFile && !looksLikeSafetensors(sniff, size: Int(st.st_size)) {
                throw .notReplaceable(path, reason: "it is not a safetensors file", entries: [])
            }
            if kind == .textFile && sniff.contains(0) {
                throw .notReplaceable(path, reason: "it is a binary file, not a text file opconvert writes", entries: [])
            }
        case .directory:
            guard type == S_IFDIR else {
                throw .notReplaceable(path, reason: "it is \(describe(type)), not a directory", entries: [])
            }
            if let id = FileID(path: path), protectedIDs().contains(id) {
                throw .notReplaceable(path, reason: "it is /, the home directory or the current directory (or holds it)", entries: [])
            }
            let foreign = try foreignEntries(path, allowed: names)
            if !foreign.isEmpty {
                throw .notReplaceable(path, reason: "the directory holds files opconvert did not write", entries: foreign)
            }
        }
    }

    /// Entries of an existing output directory that opconvert would not have written.
    static func foreignEntries(_ path: String, allowed: Set<String>) throws(OutputError) -> [String] {
        let names: [String]
        do { names = try FileSystem.list(path) } catch {
            throw .notReplaceable(path, reason: "it cannot be listed (\(error))", entries: [])
        }
        return names.filter { name in
            guard let st = POSIX.lstat(FileSystem.join(path, name)), st.st_mode & S_IFMT == S_IFREG else { return true }
            return !(allowed.contains(name) || isStandardName(name))
        }
    }

    /// The root, the home directory, the current directory and its ancestors.
    static func protectedIDs() -> Set<FileID> {
        var ids = Set<FileID>()
        if let cwd = FileSystem.canonical(".") { ids.formUnion(ancestorIDs(of: cwd)) }
        if let home = getenv("HOME").map({ String(cString: $0) }), let id = FileID(path: home) { ids.insert(id) }
        if let root = FileID(path: "/") { ids.insert(root) }
        return ids
    }

    /// Identities of a resolved path and every directory above it.
    static func ancestorIDs(of resolved: String) -> Set<FileID> {
        var ids = Set<FileID>()
        var p = resolved
        while true {
            if let id = FileID(path: p) { ids.insert(id) }
            if p == "/" || p == "." || p.isEmpty { break }
            p = FileSystem.split(p).directory
        }
        return ids
    }

    /// The nearest existing path at or above `path`, resolved.
    static func nearestExisting(_ path: String) -> String {
        var p = FileSystem.absolute(path)
        while !FileSystem.exists(p) && p != "/" { p = FileSystem.split(p).directory }
        return FileSystem.canonical(p) ?? p
    }

    static func nearestNonDirectory(above path: String) -> String {
        var p = FileSystem.split(FileSystem.absolute(path)).directory
        var found = p
        while p != "/" {
            if POSIX.lstat(p) != nil && !FileSystem.isDirectory(p) { found = p }
            p = FileSystem.split(p).directory
        }
        return found
    }

    static func describe(_ type: mode_t) -> String {
        switch type {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "a special file"
        }
    }

    static func readPrefix(_ path: String, count: Int) -> [UInt8] {
        guard let fd = POSIX.openIfPossible(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) else { return [] }
        defer { POSIX.close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { POSIX.read(fd, into: $0.baseAddress, count: count) }
        return n > 0 ? Array(bytes.prefix(n)) : []
    }

    /// An 8-byte little-endian header length that fits the file, then '{'.
    static func looksLikeSafetensors(_ prefix: [UInt8], size: Int) -> Bool {
        guard prefix.count >= 9 else { return false }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(prefix[i]) << (8 * UInt64(i)) }
        return n <= UInt64(size - 8) && prefix[8] == UInt8(ascii: "{")
    }
}

/// A file's identity: device and inode (links resolved).
struct FileID: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    var isDirectory: Bool

    init?(path: String) {
        guard let st = POSIX.stat(path) else { return nil }
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        isDirectory = st.st_mode & S_IFMT == S_IFDIR
    }

    static func == (a: FileID, b: FileID) -> Bool { a.device == b.device && a.inode == b.inode }
    func hash(into h: inout Hasher) { h.combine(device); h.combine(inode) }
}
