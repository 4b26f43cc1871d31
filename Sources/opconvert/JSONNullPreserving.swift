import Foundation

// Every key of a result is present in its JSON (README "JSON output"): an Encoder that
// forwards to JSONEncoder's but writes null where synthesized Codable would leave an
// optional field out (encodeIfPresent). Wrapping the encoder, not the types, keeps fields
// other commands add covered without a custom encode(to:) each.

/// `value` encoded with absent optionals written as null, at any depth. Dictionaries with
/// String keys go to JSONEncoder as they are: it leaves their keys as given (no snake_case).
struct NullPreserving<T: Encodable>: Encodable {
    var value: T
    var key: String? = nil
    func encode(to encoder: Encoder) throws {
        if key == "details", let details = value as? [String: String] {
            try TypedDetails(details).encode(to: encoder)
        } else if value is any StringKeyedDictionary {
            // Through a container, so that JSONEncoder sees the dictionary (keys as given).
            var c = encoder.singleValueContainer()
            try c.encode(value)
        } else {
            try value.encode(to: NullPreservingEncoder(base: encoder))
        }
    }
}

protocol StringKeyedDictionary {}
extension Dictionary: StringKeyedDictionary where Key == String {}

struct NullPreservingEncoder: Encoder {
    var base: Encoder
    var codingPath: [CodingKey] { base.codingPath }
    var userInfo: [CodingUserInfoKey: Any] { base.userInfo }
    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(NullPreservingKeyed(base: base.container(keyedBy: type)))
    }
    func unkeyedContainer() -> UnkeyedEncodingContainer { NullPreservingUnkeyed(base: base.unkeyedContainer()) }
    func singleValueContainer() -> SingleValueEncodingContainer { NullPreservingSingle(base: base.singleValueContainer()) }
}

struct NullPreservingKeyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
    var base: KeyedEncodingContainer<Key>
    var codingPath: [CodingKey] { base.codingPath }
    mutating func encodeNil(forKey key: Key) throws { try base.encodeNil(forKey: key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: String, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try base.encode(value, forKey: key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try base.encode(NullPreserving(value: value, key: key.stringValue), forKey: key)
    }
    mutating func encodeIfPresent(_ value: Bool?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Float?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Int?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Int8?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Int16?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Int32?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: UInt?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: UInt8?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: UInt16?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: UInt32?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent(_ value: UInt64?, forKey key: Key) throws { try value.map { try base.encode($0, forKey: key) } ?? base.encodeNil(forKey: key) }
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try base.encodeNil(forKey: key) }
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(NullPreservingKeyed<NestedKey>(base: base.nestedContainer(keyedBy: keyType, forKey: key)))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> UnkeyedEncodingContainer {
        NullPreservingUnkeyed(base: base.nestedUnkeyedContainer(forKey: key))
    }
    mutating func superEncoder() -> Encoder { NullPreservingEncoder(base: base.superEncoder()) }
    mutating func superEncoder(forKey key: Key) -> Encoder { NullPreservingEncoder(base: base.superEncoder(forKey: key)) }
}

struct NullPreservingUnkeyed: UnkeyedEncodingContainer {
    var base: UnkeyedEncodingContainer
    var codingPath: [CodingKey] { base.codingPath }
    var count: Int { base.count }
    mutating func encodeNil() throws { try base.encodeNil() }
    mutating func encode(_ value: Bool) throws { try base.encode(value) }
    mutating func encode(_ value: String) throws { try base.encode(value) }
    mutating func encode(_ value: Double) throws { try base.encode(value) }
    mutating func encode(_ value: Float) throws { try base.encode(value) }
    mutating func encode(_ value: Int) throws { try base.encode(value) }
    mutating func encode(_ value: Int8) throws { try base.encode(value) }
    mutating func encode(_ value: Int16) throws { try base.encode(value) }
    mutating func encode(_ value: Int32) throws { try base.encode(value) }
    mutating func encode(_ value: Int64) throws { try base.encode(value) }
    mutating func encode(_ value: UInt) throws { try base.encode(value) }
    mutating func encode(_ value: UInt8) throws { try base.encode(value) }
    mutating func encode(_ value: UInt16) throws { try base.encode(value) }
    mutating func encode(_ value: UInt32) throws { try base.encode(value) }
    mutating func encode(_ value: UInt64) throws { try base.encode(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { try base.encode(NullPreserving(value: value)) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(NullPreservingKeyed<NestedKey>(base: base.nestedContainer(keyedBy: keyType)))
    }
    mutating func nestedUnkeyedContainer() -> UnkeyedEncodingContainer { NullPreservingUnkeyed(base: base.nestedUnkeyedContainer()) }
    mutating func superEncoder() -> Encoder { NullPreservingEncoder(base: base.superEncoder()) }
}

struct NullPreservingSingle: SingleValueEncodingContainer {
    var base: SingleValueEncodingContainer
    var codingPath: [CodingKey] { base.codingPath }
    mutating func encodeNil() throws { try base.encodeNil() }
    mutating func encode(_ value: Bool) throws { try base.encode(value) }
    mutating func encode(_ value: String) throws { try base.encode(value) }
    mutating func encode(_ value: Double) throws { try base.encode(value) }
    mutating func encode(_ value: Float) throws { try base.encode(value) }
    mutating func encode(_ value: Int) throws { try base.encode(value) }
    mutating func encode(_ value: Int8) throws { try base.encode(value) }
    mutating func encode(_ value: Int16) throws { try base.encode(value) }
    mutating func encode(_ value: Int32) throws { try base.encode(value) }
    mutating func encode(_ value: Int64) throws { try base.encode(value) }
    mutating func encode(_ value: UInt) throws { try base.encode(value) }
    mutating func encode(_ value: UInt8) throws { try base.encode(value) }
    mutating func encode(_ value: UInt16) throws { try base.encode(value) }
    mutating func encode(_ value: UInt32) throws { try base.encode(value) }
    mutating func encode(_ value: UInt64) throws { try base.encode(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { try base.encode(NullPreserving(value: value)) }
}

/// A format's details (text in the library, for the human report) with JSON types: whole
/// numbers and decimals as numbers, true/false as booleans, "(none)" as null; anything
/// else stays a string.
struct TypedDetails: Encodable {
    var details: [String: String]
    init(_ details: [String: String]) { self.details = details }

    enum Value: Encodable {
        case string(String), int(Int), double(Double), bool(Bool), null
        init(_ text: String) {
            switch text {
            case "true": self = .bool(true)
            case "false": self = .bool(false)
            case "(none)": self = .null
            default:
                if let i = Int(text), String(i) == text { self = .int(i) }
                else if TypedDetails.isDecimal(text), let d = Double(text), d.isFinite { self = .double(d) }
                else { self = .string(text) }
            }
        }
        func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case let .string(v): try c.encode(v)
            case let .int(v): try c.encode(v)
            case let .double(v): try c.encode(v)
            case let .bool(v): try c.encode(v)
            case .null: try c.encodeNil()
            }
        }
    }

    /// -?digits.digits with an optional exponent: what Swift prints for a Double ("16.0",
    /// "1e-05"), not "1.2.3" or " 5".
    static func isDecimal(_ s: String) -> Bool {
        var rest = Substring(s)
        if rest.hasPrefix("-") { rest = rest.dropFirst() }
        let mantissa = rest.prefix { $0 != "e" && $0 != "E" }
        let exponent = rest.dropFirst(mantissa.count)
        let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }) else { return false }
        guard parts.count == 2 || !exponent.isEmpty else { return false }
        if exponent.isEmpty { return true }
        var digits = exponent.dropFirst()
        if digits.hasPrefix("-") || digits.hasPrefix("+") { digits = digits.dropFirst() }
        return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(details.mapValues(Value.init))
    }
}
