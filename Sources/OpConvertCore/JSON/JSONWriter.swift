/// JSON text in the two dialects opconvert must reproduce byte for byte:
/// - `compact`: serde_json's compact form, as the safetensors writer emits its header
///   (only `"`, `\` and control characters escaped; UTF-8 kept as is).
/// - `python`: Python's `json.dumps(obj, indent=2, sort_keys=...)` as transformers and PEFT
///   write config and index files (non-ASCII escaped as \uXXXX, ", " and ": " separators).
public enum JSONWriter {
    public enum Style: Sendable { case compact, python(indent: Int, sortKeys: Bool) }

    public static func serialize(_ value: JSONValue, style: Style = .compact) -> String {
        var out = ""
        write(value, style: style, depth: 0, into: &out)
        return out
    }

    private static func write(_ value: JSONValue, style: Style, depth: Int, into out: inout String) {
        switch value {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .uint(u): out += String(u)
        case let .double(d): out += formatDouble(d)
        case let .number(text): out += text
        case let .string(s): writeString(s, style: style, into: &out)
        case let .array(items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (k, item) in items.enumerated() {
                if k > 0 { out += "," }
                newline(style, depth + 1, &out)
                write(item, style: style, depth: depth + 1, into: &out)
            }
            newline(style, depth, &out)
            out += "]"
        case let .object(members):
            if members.isEmpty { out += "{}"; return }
            var ordered = members
            if case .python(_, true) = style { ordered.sort { $0.0 < $1.0 } }
            out += "{"
            for (k, (key, item)) in ordered.enumerated() {
                if k > 0 { out += "," }
                newline(style, depth + 1, &out)
                writeString(key, style: style, into: &out)
                if case .compact = style { out += ":" } else { out += ": " }
                write(item, style: style, depth: depth + 1, into: &out)
            }
            newline(style, depth, &out)
            out += "}"
        }
    }

    private static func newline(_ style: Style, _ depth: Int, _ out: inout String) {
        if case let .python(indent, _) = style {
            out += "\n" + String(repeating: " ", count: indent * depth)
        }
    }

    /// Python's float repr: shortest round-trip digits, "1e-05" style exponents.
    package static func formatDouble(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return "\(d)"
    }

    private static func writeString(_ s: String, style: Style, into out: inout String) {
        let asciiOnly: Bool
        if case .python = style { asciiOnly = true } else { asciiOnly = false }
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (asciiOnly && u.value == 0x7F) {
                    out += "\\u" + hex4(UInt16(u.value))
                } else if asciiOnly && u.value > 0x7F {
                    for unit in String(u).utf16 { out += "\\u" + hex4(unit) }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    private static func hex4(_ v: UInt16) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 4 - s.count) + s
    }
}
