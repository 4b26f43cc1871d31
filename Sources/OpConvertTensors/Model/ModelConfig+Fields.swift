import OpConvertCore

extension ModelConfig {
    /// The parsed top-level object of a config.json (nil when the file is absent).
    package static func read(at path: String) throws -> JSONValue? {
        guard FileSystem.exists(path) else { return nil }
        let root: JSONValue
        do { root = try JSONParser.parse(try FileSystem.readAll(path)) } catch let error as JSONParseError {
            throw ModelConfigError(path: path, reason: "not valid JSON: \(error.message)")
        }
        guard case .object = root else { throw ModelConfigError(path: path, reason: "top level is a JSON \(root.typeName), not an object") }
        return root
    }

    /// `bytes` (a config.json's text) with top-level `fields` set: a present member's value
    /// text is replaced, a missing one is appended before the closing brace. Every other byte
    /// is kept, as `rewritingDType` does.
    package static func settingFields(_ fields: [(key: String, value: JSONValue)], in bytes: [UInt8], path: String) throws -> [UInt8] {
        let members: [(key: String, value: Range<Int>)]
        do {
            let root = try JSONParser.parse(bytes)
            guard case .object = root else { throw ModelConfigError(path: path, reason: "top level is a JSON \(root.typeName), not an object") }
            members = try JSONStrictScanner.topLevelMembers(of: bytes) ?? []
        } catch let error as JSONParseError {
            throw ModelConfigError(path: path, reason: "not valid JSON: \(error.message)")
        }
        var out = bytes
        var missing: [(key: String, value: JSONValue)] = []
        // Replacements back to front, so earlier spans stay where they are.
        var edits: [(Range<Int>, [UInt8])] = []
        for field in fields {
            let hits = members.filter { $0.key == field.key }
            if hits.isEmpty { missing.append(field) }
            for hit in hits { edits.append((hit.value, Array(JSONWriter.serialize(field.value).utf8))) }
        }
        for (range, text) in edits.sorted(by: { $0.0.lowerBound > $1.0.lowerBound }) { out.replaceSubrange(range, with: text) }
        if !missing.isEmpty {
            guard let close = out.lastIndex(of: UInt8(ascii: "}")) else { return out }
            // The indentation of the last member, so an appended one lines up.
            let indent = members.last.map { Self.indentation(before: $0.value.lowerBound, in: bytes) } ?? "  "
            var text = ""
            for (i, field) in missing.enumerated() {
                text += (members.isEmpty && i == 0 ? "" : ",") + "\n" + indent + JSONWriter.serialize(.string(field.key)) + ": " + JSONWriter.serialize(field.value)
            }
            // Insert after the last non-blank byte before the brace.
            var at = close
            while at > 0, [UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t")].contains(out[at - 1]) { at -= 1 }
            out.insert(contentsOf: Array(text.utf8), at: at)
        }
        return out
    }

    private static func indentation(before offset: Int, in bytes: [UInt8]) -> String {
        var i = min(offset, bytes.count)
        while i > 0, bytes[i - 1] != UInt8(ascii: "\n") { i -= 1 }
        var n = 0
        while i + n < bytes.count, bytes[i + n] == UInt8(ascii: " ") { n += 1 }
        return String(repeating: " ", count: max(n, 1))
    }
}
