import OpConvertCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An input that does not exist (66), or exists but is not the kind of thing the command
/// needs (65). The message names the path, what it is and what was expected.
public enum InputError: CategorizedError, Sendable, Equatable {
    case notFound(path: String, expected: String)
    case wrongKind(path: String, problem: String)

    public var category: ErrorCategory {
        switch self {
        case .notFound: return .missingInput
        case .wrongKind: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .notFound(p, expected): return "\(p): does not exist (expected \(expected))"
        case let .wrongKind(p, problem): return "\(p): \(problem)"
        }
    }
}

/// What a path on disk is, as far as opconvert's inputs go.
public enum InputKind: Equatable, Sendable {
    case missing
    case file(FileContent)
    case emptyDirectory
    case peftAdapter
    case opCheckpoint
    /// Has .safetensors weights or an index.
    case model
    /// None of the above; the first few names it holds.
    case otherDirectory(names: [String])
    /// A socket, device, FIFO, ...
    case special

    public enum FileContent: Equatable, Sendable {
        case empty, safetensorsLike, text, json, zstd, zip, pickle, gguf, elf, binary
    }

    public static func of(_ path: String) -> InputKind {
        guard FileSystem.exists(path) else { return .missing }
        if FileSystem.isRegularFile(path) { return .file(sniff(path)) }
        guard FileSystem.isDirectory(path) else { return .special }
        guard let names = try? FileSystem.list(path) else { return .otherDirectory(names: []) }
        let visible = names.filter { !$0.hasPrefix(".") }
        if visible.isEmpty { return .emptyDirectory }
        // op_config.json marks an OP checkpoint (OPConfig.fileName, a layer above).
        if FileSystem.isRegularFile(FileSystem.join(path, "op_config.json")) { return .opCheckpoint }
        if FileSystem.isRegularFile(FileSystem.join(path, "adapter_config.json")) { return .peftAdapter }
        if visible.contains(where: { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json") }) { return .model }
        return .otherDirectory(names: Array(visible.prefix(4)))
    }

    /// Guesses a file's format from its first bytes (reads at most 512 bytes).
    public static func sniff(_ path: String) -> FileContent {
        guard let fd = POSIX.openIfPossible(path, O_RDONLY | O_CLOEXEC) else { return .binary }
        defer { POSIX.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { POSIX.read(fd, into: $0.baseAddress, count: 512) }
        guard n > 0 else { return .empty }
        let head = Array(buffer[0..<n])
        if head.starts(with: [0x28, 0xB5, 0x2F, 0xFD]) { return .zstd }
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return .zip }
        if head.starts(with: Array("GGUF".utf8)) { return .gguf }
        if head.starts(with: [0x7F, 0x45, 0x4C, 0x46]) { return .elf }
        if head.count >= 2 && head[0] == 0x80 && (2...5).contains(head[1]) { return .pickle }
        // An 8-byte length, then a header starting like JSON: safetensors, maybe a damaged one.
        if head.count >= 9 && [UInt8(ascii: "{"), 0x20, 0x09, 0x0A, 0x0D].contains(head[8]) && head[0..<8].contains(where: { $0 < 0x20 }) {
            return .safetensorsLike
        }
        // Text: no NUL or other control bytes but whitespace (UTF-8 multibyte sequences allowed).
        let isText = head.allSatisfy { $0 >= 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        if isText {
            let first = head.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
            return first == UInt8(ascii: "{") || first == UInt8(ascii: "[") ? .json : .text
        }
        return .binary
    }

    /// A noun phrase for messages: "a text file", "a PEFT adapter directory", ...
    public var phrase: String {
        switch self {
        case .missing: return "nothing (the path does not exist)"
        case let .file(content):
            switch content {
            case .empty: return "an empty file"
            case .safetensorsLike: return "a safetensors file"
            case .text: return "a text file"
            case .json: return "a JSON file"
            case .zstd: return "a zstd-compressed file"
            case .zip: return "a zip archive (PyTorch's torch.save format?)"
            case .pickle: return "a Python pickle"
            case .gguf: return "a GGUF file"
            case .elf: return "an executable or shared library"
            case .binary: return "a binary file of unknown format"
            }
        case .emptyDirectory: return "an empty directory"
        case .peftAdapter: return "a PEFT adapter directory"
        case .opCheckpoint: return "an OP checkpoint directory"
        case .model: return "a model directory"
        case let .otherDirectory(names):
            let held = names.isEmpty ? "" : " (it holds \(names.joined(separator: ", "))\(names.count == 4 ? ", ..." : ""))"
            return "a directory with neither weights nor an adapter config\(held)"
        case .special: return "not a regular file or directory"
        }
    }
}

/// The checks that turn "wrong kind of path" into a clear error before any parsing.
public enum InputCheck {
    public static let tensorsExpected = "a .safetensors file, a *.safetensors.index.json or a model directory"

    /// A directory given where a model or tensor set is needed: refuses adapters, OP
    /// checkpoints, empty directories and directories without weights.
    static func requireModelDirectory(_ path: String) throws {
        let kind = InputKind.of(path)
        switch kind {
        case .missing: throw InputError.notFound(path: path, expected: tensorsExpected)
        case .model, .file: return
        case .peftAdapter where looksLikeModel(path), .opCheckpoint where looksLikeModel(path):
            // A model directory that also carries an adapter's config: the model wins.
            return
        case .peftAdapter:
            throw InputError.wrongKind(path: path, problem: "a PEFT adapter, not a model (expected \(tensorsExpected))")
        case .opCheckpoint:
            throw InputError.wrongKind(path: path, problem: "an OP checkpoint, not a model (expected \(tensorsExpected))")
        default:
            throw InputError.wrongKind(path: path, problem: "\(kind.phrase), expected \(tensorsExpected)")
        }
    }

    /// Model files transformers writes: config.json, model.safetensors or an index.
    private static func looksLikeModel(_ path: String) -> Bool {
        ["config.json", "model.safetensors", "model.safetensors.index.json"].contains { FileSystem.isRegularFile(FileSystem.join(path, $0)) }
    }

    /// A JSON file input (a key map).
    package static func requireFile(_ path: String, expected: String) throws {
        let kind = InputKind.of(path)
        switch kind {
        case .missing: throw InputError.notFound(path: path, expected: expected)
        case .file: return
        default: throw InputError.wrongKind(path: path, problem: "\(kind.phrase) where a file is needed (expected \(expected))")
        }
    }

    /// A safetensors read that failed on the framing (length prefix, first header byte):
    /// when the file does not even look like safetensors, say what it looks like instead.
    package static func notSafetensors(_ path: String, error: SafetensorsError) -> InputError? {
        switch error {
        case .fileTooSmall, .headerTooLarge, .headerPastEndOfFile, .headerNotUTF8, .invalidJSON, .invalidHeader: break
        default: return nil
        }
        let content = InputKind.sniff(path)
        // A .zst that decompressed: the safetensors error is about its content, keep it.
        if content == .safetensorsLike || content == .zstd { return nil }
        let phrase = InputKind.file(content).phrase
        // The length prefix read from text is noise; for binary data it is the evidence.
        if [.empty, .text, .json].contains(content) { return .wrongKind(path: path, problem: "not a safetensors file: \(phrase)") }
        var detail = error.description
        if detail.hasPrefix(path + ": ") { detail.removeFirst(path.count + 2) }
        return .wrongKind(path: path, problem: "not a safetensors file: \(phrase) (\(detail))")
    }

    /// A .safetensors.zst that does not decompress: not zstd at all, or damaged zstd data.
    static func notZstd(_ path: String, error: ZstdError) -> InputError? {
        if error.message.lowercased().contains("memory") { return nil }
        let content = InputKind.sniff(path)
        if content == .zstd {
            return .wrongKind(path: path, problem: "damaged zstd data: \(error.message)")
        }
        return .wrongKind(path: path, problem: "not zstd-compressed safetensors: \(InputKind.file(content).phrase)")
    }
}
