import CJSONC

/// Why a JSON text was refused.
public struct JSONParseError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// JSON parsing on json-c, converted into `JSONValue` right away so no json-c object
/// outlives the call. json-c is lenient in places the reference (serde_json) is not, and
/// collapses duplicate keys, so `JSONStrictScanner` first checks the text against RFC 8259
/// exactly as serde_json does, rejects duplicate keys, and records every object's keys
/// byte-exact (json-c cannot return keys holding \u0000).
public enum JSONParser {
    /// Nesting limit; serde_json (the reference's parser) stops at 128.
    static let maxDepth = 128

    public static func parse(_ bytes: UnsafeRawBufferPointer, rejectDuplicateKeys: Bool = true) throws(JSONParseError) -> JSONValue {
        guard let tok = json_tokener_new_ex(Int32(maxDepth + 2)) else {
            throw JSONParseError(message: "out of memory")
        }
        defer { json_tokener_free(tok) }
        json_tokener_set_flags(tok, Int32(JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8))
        var scanner = JSONStrictScanner(bytes: bytes, maxDepth: maxDepth, rejectDuplicateKeys: rejectDuplicateKeys)
        try scanner.scan()
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count > 0 else {
            throw JSONParseError(message: "empty JSON text")
        }
        // json-c takes an int length; headers are capped at 1e8 bytes by the caller.
        guard bytes.count < Int(Int32.max) else { throw JSONParseError(message: "JSON text too large") }
        let root = json_tokener_parse_ex(tok, base, Int32(bytes.count))
        let err = json_tokener_get_error(tok)
        guard let root, err == json_tokener_success else {
            if err == json_tokener_continue || root == nil && err == json_tokener_success {
                throw JSONParseError(message: "unexpected end of JSON text")
            }
            let offset = json_tokener_get_parse_end(tok)
            throw JSONParseError(message: "\(String(cString: json_tokener_error_desc(err))) at byte \(offset)")
        }
        defer { json_object_put(root) }
        // json-c stops after the first value; only whitespace may follow it.
        var i = Int(json_tokener_get_parse_end(tok))
        while i < bytes.count {
            let c = bytes[i]
            guard c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D else {
                throw JSONParseError(message: "unexpected data after the JSON value at byte \(i)")
            }
            i += 1
        }
        var keys = KeyFeed(keys: scanner.objectKeys)
        return convert(root, keys: &keys)
    }

    public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        var result: Result<JSONValue, JSONParseError> = .failure(JSONParseError(message: "empty"))
        bytes.withUnsafeBytes { b in
            do throws(JSONParseError) { result = .success(try parse(b)) } catch { result = .failure(error) }
        }
        return try result.get()
    }

    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8))
    }

    /// Object keys in document (pre-)order, as the scanner decoded them.
    struct KeyFeed {
        var keys: [[String]]
        var next = 0
        mutating func take() -> [String] { defer { next += 1 }; return keys[next] }
    }

    private static func convert(_ obj: OpaquePointer?, keys: inout KeyFeed) -> JSONValue {
        guard let obj else { return .null }
        switch json_object_get_type(obj) {
        case json_type_null:
            return .null
        case json_type_boolean:
            return .bool(json_object_get_boolean(obj) != 0)
        case json_type_int:
            let v = json_object_get_int64(obj)
            if v == Int64.max {
                return .uint(json_object_get_uint64(obj))
            }
            return .int(v)
        case json_type_double:
            return .double(json_object_get_double(obj))
        case json_type_string:
            let len = Int(json_object_get_string_len(obj))
            let p = json_object_get_string(obj)!
            let buf = UnsafeRawBufferPointer(start: p, count: len)
            return .string(String(decoding: buf, as: UTF8.self))
        case json_type_array:
            let n = json_object_array_length(obj)
            var items: [JSONValue] = []
            items.reserveCapacity(n)
            for i in 0..<n { items.append(convert(json_object_array_get_idx(obj, i), keys: &keys)) }
            return .array(items)
        case json_type_object:
            // json-c keeps insertion order, which is the scanner's order.
            let names = keys.take()
            var members: [(String, JSONValue)] = []
            var it = json_object_iter_begin(obj)
            var end = json_object_iter_end(obj)
            var k = 0
            while json_object_iter_equal(&it, &end) == 0 {
                let name = k < names.count ? names[k] : String(cString: json_object_iter_peek_name(&it))
                members.append((name, convert(json_object_iter_peek_value(&it), keys: &keys)))
                json_object_iter_next(&it)
                k += 1
            }
            return .object(members)
        default:
            return .null
        }
    }
}

