import OpConvertCore

/// Reading and minimally rewriting a transformers `config.json`.
public enum ModelConfig {
    /// The config with its top-level dtype field ("dtype" in transformers 5, "torch_dtype"
    /// before) set to `torchName`. Only that value's text changes: every other byte (number
    /// spellings such as 1e30 or 0.1000000000000000055511151231257827, escapes, key order,
    /// layout) is kept, since re-serializing would round or reformat what we did not read.
    /// Byte-identical copy when the field already says so or is absent.
    public static func rewritingDType(at path: String, to torchName: String) throws -> [UInt8] {
        let bytes = try FileSystem.readAll(path)
        var members: [(key: String, value: Range<Int>)] = []
        let root: JSONValue
        do {
            // The whole text must be valid JSON (names and numbers checked) before any edit.
            root = try JSONParser.parse(bytes)
            guard case .object = root else { throw ModelConfigError(path: path, reason: "top level is a JSON \(root.typeName), not an object") }
            members = try JSONStrictScanner.topLevelMembers(of: bytes) ?? []
        } catch let error as JSONParseError {
            throw ModelConfigError(path: path, reason: "not valid JSON: \(error.message)")
        }
        let replacement = Array(JSONWriter.serialize(.string(torchName)).utf8)
        var out = bytes
        // Back to front, so earlier spans stay where they are.
        for member in members.reversed() where member.key == "dtype" || member.key == "torch_dtype" {
            if root[member.key]?.stringValue == torchName { continue }
            out.replaceSubrange(member.value, with: replacement)
        }
        return out
    }
}

/// config.json exists but cannot be read as a config (exit 65, naming the file).
public struct ModelConfigError: CategorizedError, Sendable {
    public var path: String
    public var reason: String
    public var description: String { "\(path): \(reason)" }
    public var category: ErrorCategory { .malformedInput }

    package init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
}
