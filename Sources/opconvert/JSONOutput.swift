import ArgumentParser
import Foundation
import OpConvertKit

// The one JSON contract of every command (README "JSON output", docs/schema/
// opconvert-result.schema.json): one compact line with sorted keys; "ok", "command",
// "version", "warnings" (always an array) and "non_finite_numbers" in every object;
// failures add "error", "exit_code" and "category". A command adopts it by calling
// printJSON(summary) (or printJSONError) and nothing else.

/// Prints an Encodable result as one JSON line with `"ok": true` and the contract's keys
/// added to the object. `warnings` nil takes those emitted outside any collector; `extra`
/// adds or replaces fields (a report that failed sets ok, error, exit_code, category).
func printJSON<T: Encodable>(_ value: T, warnings: [String]? = nil, extra: [String: JSONExtra] = [:]) throws {
    let data = try JSONResult.encode(value, warnings: warnings ?? Warnings.takeUnbound(), extra: extra)
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

/// The JSON error object on stdout: {"ok": false, "error": ..., "exit_code": N, "category": ..., ...}.
func printJSONError(message: String, exitCode: Int32) {
    if let data = try? JSONResult.encode(JSONResult.Empty(), warnings: Warnings.takeUnbound(), extra: JSONResult.failure(message: message, exitCode: exitCode)) {
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}

enum JSONExtra: Encodable {
    case string(String), int(Int), bool(Bool)
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case let .string(v): try c.encode(v)
        case let .int(v): try c.encode(v)
        case let .bool(v): try c.encode(v)
        }
    }
}

enum JSONResult {
    struct Empty: Encodable {}

    /// The failure fields of the contract for an error with this message and exit code.
    static func failure(message: String, exitCode: Int32) -> [String: JSONExtra] {
        ["ok": .bool(false), "error": .string(message), "exit_code": .int(Int(exitCode)), "category": .string(categoryName(exitCode))]
    }

    /// The category of an exit code, as the JSON "category" names it.
    static func categoryName(_ code: Int32) -> String {
        if code > 128 { return "interrupted" }
        switch ExitStatus(rawValue: code) {
        case .success: return "none"
        case .usage: return "usage"
        case .dataError: return "malformed_input"
        case .noInput: return "missing_input"
        case .unsupported: return "unsupported"
        case .cannotCreate: return "output_conflict"
        case .ioError: return "io"
        case .failure, nil: return "internal"
        }
    }

    /// Stands in for a non-finite number while encoding; replaced by null afterwards (a
    /// file's own strings never hold the NUL it starts with).
    static let sentinel = "\u{0}opconvert-non-finite:"

    static func encode<T: Encodable>(_ value: T, warnings: [String], extra: [String: JSONExtra]) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: sentinel + "Infinity", negativeInfinity: sentinel + "-Infinity", nan: sentinel + "NaN")
        var fields: [String: JSONExtra] = ["ok": .bool(true), "command": .string(commandName), "version": .string(OpConvertVersion.string)]
        fields.merge(extra) { _, new in new }
        var data = try encoder.encode(Contract(value: value, warnings: warnings, fields: fields, nonFinite: [:]))
        let marker = Data(JSONEncoder.escapedSentinelPrefix.utf8)
        guard data.range(of: marker) != nil else { return data }
        // Non-finite numbers (a diverged loss): null in place, and the JSON Pointer of each
        // with its value in "non_finite_numbers".
        let tree = try JSONSerialization.jsonObject(with: data)
        var found: [String: String] = [:]
        collectNonFinite(tree, pointer: "", into: &found)
        data = try encoder.encode(Contract(value: value, warnings: warnings, fields: fields, nonFinite: found))
        var text = String(decoding: data, as: UTF8.self)
        for v in ["Infinity", "-Infinity", "NaN"] {
            text = text.replacingOccurrences(of: "\"" + JSONEncoder.escapedSentinelPrefix + v + "\"", with: "null")
        }
        return Data(text.utf8)
    }

    private static func collectNonFinite(_ node: Any, pointer: String, into found: inout [String: String]) {
        if let s = node as? String, s.hasPrefix(sentinel) {
            found[pointer] = String(s.dropFirst(sentinel.count))
        } else if let a = node as? [Any] {
            for (i, v) in a.enumerated() { collectNonFinite(v, pointer: pointer + "/\(i)", into: &found) }
        } else if let o = node as? [String: Any] {
            for (k, v) in o {
                let escaped = k.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
                collectNonFinite(v, pointer: pointer + "/" + escaped, into: &found)
            }
        }
    }

    /// The command's name as typed ("merge", "plugin list", "train finetune"), from the
    /// arguments: usage errors have no parsed command to ask.
    static var commandName: String {
        var names: [String] = []
        var level: [ParsableCommand.Type] = OpConvert.configuration.subcommands
        var current: ParsableCommand.Type = OpConvert.self
        for arg in CommandLine.arguments.dropFirst() {
            guard let next = level.first(where: { $0._commandName == arg }) else { break }
            names.append(arg)
            current = next
            level = next.configuration.subcommands
        }
        if !names.isEmpty, let d = current.configuration.defaultSubcommand { names.append(d._commandName) }
        return names.isEmpty ? "opconvert" : names.joined(separator: " ")
    }

    /// Encodes `value`'s own fields, then adds the contract's keys into the same object
    /// (replacing a field of the same name, such as MergeSummary's own warnings, so it
    /// appears once).
    private struct Contract<T: Encodable>: Encodable {
        var value: T
        var warnings: [String]
        var fields: [String: JSONExtra]
        var nonFinite: [String: String]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ s: String) { stringValue = s }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: Encoder) throws {
            try NullPreserving(value: value).encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(warnings, forKey: Key("warnings"))
            try c.encode(nonFinite, forKey: Key("non_finite_numbers"))
            for (k, v) in fields { try c.encode(v, forKey: Key(k)) }
        }
    }
}

private extension JSONEncoder {
    /// How the sentinel's NUL appears inside an encoded string.
    static let escapedSentinelPrefix = "\\u0000opconvert-non-finite:"
}
