/// A parsed JSON document. Objects keep their members in document order so that
/// rewriting a file (configs, indexes) can keep what it did not change.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    /// An integer above Int64.max.
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])
    /// A number kept as its source text because no other case holds it exactly: an integer
    /// beyond UInt64, or a float whose shortest repr is not its text (1e400, 1E5,
    /// 0.1000000000000000055511151231257827). Written back verbatim.
    case number(String)

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.uint(x), .uint(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case let (.number(x), .number(y)): return x == y
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.last(where: { $0.0 == key })?.1
    }

    public var stringValue: String? { if case let .string(s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var arrayValue: [JSONValue]? { if case let .array(a) = self { return a } else { return nil } }
    public var objectValue: [(String, JSONValue)]? { if case let .object(o) = self { return o } else { return nil } }

    /// Integer value when it is a JSON integer that fits in Int.
    public var intValue: Int? {
        switch self {
        case let .int(i): return Int(exactly: i)
        case let .uint(u): return Int(exactly: u)
        default: return nil
        }
    }

    /// Numeric value of an integer or a float; nil for a number a Double cannot hold
    /// (1e400 would be infinity), so callers refuse it instead of computing with it.
    public var doubleValue: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .uint(u): return Double(u)
        case let .double(d): return d
        case let .number(text):
            guard let d = Double(text), d.isFinite else { return nil }
            return d
        default: return nil
        }
    }

    /// What the value is, for error messages; numbers no reader can take say so.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int: return "integer"
        case let .uint(u): return "integer out of range (\(u))"
        case .double: return "number"
        case let .number(text):
            if JSONNumberText.isIntegral(text) { return "integer out of range (\(text))" }
            return doubleValue == nil ? "number out of range (\(text))" : "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    /// Returns a copy with `key` set (replaced in place when present, else appended).
    public func setting(_ key: String, to value: JSONValue) -> JSONValue {
        guard case var .object(members) = self else { return self }
        if let i = members.firstIndex(where: { $0.0 == key }) {
            members[i].1 = value
        } else {
            members.append((key, value))
        }
        return .object(members)
    }
}

/// Numbers decided from their source text (never from json-c, which clamps integers to
/// 64 bits and turns 1e400 into infinity).
package enum JSONNumberText {
    /// True for JSON integer syntax (no fraction, no exponent).
    package static func isIntegral<S: Sequence<UInt8>>(utf8 text: S) -> Bool {
        !text.contains { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
    }
    static func isIntegral(_ text: String) -> Bool { isIntegral(utf8: text.utf8) }

    /// A non-negative JSON integer's exact value; nil when negative, not an integer, or
    /// above UInt64.max.
    package static func unsigned(_ text: UnsafeRawBufferPointer) -> UInt64? {
        guard !text.isEmpty else { return nil }
        var v: UInt64 = 0
        for c in text {
            guard c >= 0x30 && c <= 0x39 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(c - 0x30))
            if o1 || o2 { return nil }
            v = a
        }
        return v
    }

    /// The value for well-formed JSON number text: exact integers as .int/.uint, floats as
    /// .double when Python's repr of the double is the text itself, else the text.
    package static func value(_ text: UnsafeRawBufferPointer) -> JSONValue {
        let source = String(decoding: text, as: UTF8.self)
        if isIntegral(utf8: text) {
            if text.first == UInt8(ascii: "-") {
                if let m = unsigned(UnsafeRawBufferPointer(rebasing: text.dropFirst())), m <= UInt64(Int64.max) + 1 {
                    return .int(m == UInt64(Int64.max) + 1 ? Int64.min : -Int64(m))
                }
                return .number(source)
            }
            guard let u = unsigned(text) else { return .number(source) }
            return u <= UInt64(Int64.max) ? .int(Int64(u)) : .uint(u)
        }
        if let d = Double(source), d.isFinite, JSONWriter.formatDouble(d) == source { return .double(d) }
        return .number(source)
    }
}
