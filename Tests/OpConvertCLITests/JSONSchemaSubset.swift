import Foundation
import OpConvertKit

/// A validator for the part of JSON Schema 2020-12 that docs/schema/opconvert-result.schema.json
/// uses: type (one or a list), required, properties, additionalProperties (false or a
/// schema), items, enum, const, oneOf, pattern and $ref to "#/$defs/NAME". Unknown keywords
/// are refused, so the schema cannot drift beyond what is checked.
struct JSONSchemaSubset {
    let root: JSONValue
    static let known: Set<String> = ["$schema", "$id", "title", "description", "$defs", "type", "required", "properties",
                                     "additionalProperties", "items", "enum", "const", "oneOf", "pattern", "$ref"]

    init(path: String) throws {
        root = try JSONParser.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    /// The problems of `value` against the root schema (empty: valid).
    func errors(_ value: JSONValue) -> [String] { errors(value, root, at: "") }

    func errors(_ v: JSONValue, _ s: JSONValue, at path: String) -> [String] {
        guard case let .object(members) = s else { return ["\(path): schema is not an object"] }
        var out: [String] = []
        for (k, _) in members where !Self.known.contains(k) { out.append("\(path): schema keyword \(k) is not supported by this validator") }
        if let ref = s["$ref"]?.stringValue {
            let name = ref.hasPrefix("#/$defs/") ? String(ref.dropFirst(8)) : ""
            guard let target = root["$defs"]?[name] else { return out + ["\(path): unresolved $ref \(ref)"] }
            out += errors(v, target, at: path)
        }
        if let t = s["type"] {
            let types = t.arrayValue?.compactMap(\.stringValue) ?? [t.stringValue ?? ""]
            if !types.contains(where: { Self.has(v, type: $0) }) { out.append("\(path): \(Self.describe(v)) is not \(types.joined(separator: " or "))") }
        }
        if let c = s["const"], !Self.equal(c, v) { out.append("\(path): \(Self.describe(v)) is not the constant \(Self.describe(c))") }
        if let e = s["enum"]?.arrayValue, !e.contains(where: { Self.equal($0, v) }) { out.append("\(path): \(Self.describe(v)) is not one of the enum") }
        if let p = s["pattern"]?.stringValue, let str = v.stringValue,
           (try? NSRegularExpression(pattern: p))?.firstMatch(in: str, range: NSRange(str.startIndex..., in: str)) == nil {
            out.append("\(path): \"\(str)\" does not match \(p)")
        }
        if case let .object(fields) = v {
            for r in s["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where v[r] == nil { out.append("\(path): missing key \(r)") }
            let props = s["properties"]?.objectValue ?? []
            for (k, fv) in fields {
                if let ps = props.first(where: { $0.0 == k })?.1 {
                    out += errors(fv, ps, at: path + "/" + k)
                } else if let extra = s["additionalProperties"] {
                    if extra == .bool(false) { out.append("\(path): unexpected key \(k)") } else { out += errors(fv, extra, at: path + "/" + k) }
                }
            }
        }
        if case let .array(items) = v, let itemSchema = s["items"] {
            for (i, x) in items.enumerated() { out += errors(x, itemSchema, at: path + "/\(i)") }
        }
        if let options = s["oneOf"]?.arrayValue {
            let results = options.map { errors(v, $0, at: path) }
            let matching = results.filter(\.isEmpty).count
            if matching != 1 {
                // The closest alternative's problems say most about what is wrong.
                let closest = results.min { $0.count < $1.count } ?? []
                out.append("\(path): matches \(matching) of the oneOf alternatives, not 1" + (matching == 0 ? "; closest: " + closest.prefix(5).joined(separator: "; ") : ""))
            }
        }
        return out
    }

    static func has(_ v: JSONValue, type: String) -> Bool {
        switch (type, v) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object): return true
        case ("integer", .int), ("integer", .uint): return true
        case ("number", .int), ("number", .uint), ("number", .double), ("number", .number): return true
        default: return false
        }
    }

    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        if let x = a.doubleValue, let y = b.doubleValue { return x == y }
        return a == b
    }

    static func describe(_ v: JSONValue) -> String {
        let text = JSONWriter.serialize(v)
        return text.count > 60 ? String(text.prefix(60)) + "..." : text
    }
}
