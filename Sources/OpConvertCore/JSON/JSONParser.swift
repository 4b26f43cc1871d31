import CJSONC

/// Why a JSON text was refused.
public struct JSONParseError: CategorizedError, Sendable {
    public var message: String
    public var description: String { message }
    /// Callers rethrow it as their own error naming the file; alone it is still bad input.
    public var category: ErrorCategory { .malformedInput }
}

/// JSON parsing on json-c, converted into `JSONValue` right away so no json-c object
/// outlives the call. json-c is lenient in places the reference (serde_json) is not, cuts
/// keys at \u0000, collapses duplicate keys, clamps integers to 64 bits and reads 1e400 as
/// infinity; so `JSONStrictScanner` first checks the text against RFC 8259 exactly as
/// serde_json does, refuses duplicate and NUL-holding keys, and records every key and
/// number as written. json-c supplies the tree and string values; names and numbers come
/// from the scanner, and the two must agree member for member or the text is refused.
public enum JSONParser {
    /// Nesting limit; serde_json (the reference's parser) stops at 128.
    package static let maxDepth = 128

    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        if let bad = UTF8Validation.firstInvalidByte(bytes) { throw JSONParseError(message: "invalid UTF-8 at byte \(bad)") }
        var scanner = JSONStrictScanner(bytes: bytes, maxDepth: maxDepth, recording: true)
        try scanner.scan()
        guard let tok = json_tokener_new_ex(Int32(maxDepth + 2)) else {
            throw JSONParseError(message: "out of memory")
        }
        defer { json_tokener_free(tok) }
        json_tokener_set_flags(tok, Int32(JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8))
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
        var feed = ScannerFeed(bytes: bytes, keys: scanner.objectKeys, numbers: scanner.numberSpans)
        let value = try convert(root, feed: &feed)
        guard feed.nextKeys == feed.keys.count, feed.nextNumber == feed.numbers.count else {
            throw ScannerFeed.disagreement("json-c read fewer objects or numbers than the text holds")
        }
        return value
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

    /// What the scanner decided, in document (pre-)order: each object's keys, each number's
    /// source text. json-c keeps members in insertion order, which is document order.
    struct ScannerFeed {
        let bytes: UnsafeRawBufferPointer
        let keys: [[String]]
        let numbers: [Range<Int>]
        var nextKeys = 0
        var nextNumber = 0

        static func disagreement(_ what: String) -> JSONParseError {
            JSONParseError(message: "internal JSON check failed: \(what)")
        }

        mutating func takeKeys() throws(JSONParseError) -> [String] {
            guard nextKeys < keys.count else { throw Self.disagreement("json-c read an object the text does not hold") }
            defer { nextKeys += 1 }
            return keys[nextKeys]
        }

        mutating func takeNumber(integral: Bool) throws(JSONParseError) -> JSONValue {
            guard nextNumber < numbers.count else { throw Self.disagreement("json-c read a number the text does not hold") }
            let text = UnsafeRawBufferPointer(rebasing: bytes[numbers[nextNumber]])
            nextNumber += 1
            guard JSONNumberText.isIntegral(utf8: text) == integral else {
                throw Self.disagreement("json-c and the text disagree on whether \(String(decoding: text, as: UTF8.self)) is an integer")
            }
            return JSONNumberText.value(text)
        }
    }

    private static func convert(_ obj: OpaquePointer?, feed: inout ScannerFeed) throws(JSONParseError) -> JSONValue {
        guard let obj else { return .null }
        switch json_object_get_type(obj) {
        case json_type_null:
            return .null
        case json_type_boolean:
            return .bool(json_object_get_boolean(obj) != 0)
        case json_type_int:
            return try feed.takeNumber(integral: true)
        case json_type_double:
            return try feed.takeNumber(integral: false)
        case json_type_string:
            let len = Int(json_object_get_string_len(obj))
            let p = json_object_get_string(obj)!
            let buf = UnsafeRawBufferPointer(start: p, count: len)
            return .string(String(decoding: buf, as: UTF8.self))
        case json_type_array:
            let n = json_object_array_length(obj)
            var items: [JSONValue] = []
            items.reserveCapacity(n)
            for i in 0..<n { items.append(try convert(json_object_array_get_idx(obj, i), feed: &feed)) }
            return .array(items)
        case json_type_object:
            let names = try feed.takeKeys()
            guard Int(json_object_object_length(obj)) == names.count else {
                throw ScannerFeed.disagreement("json-c read \(json_object_object_length(obj)) members of an object with \(names.count) keys")
            }
            var members: [(String, JSONValue)] = []
            members.reserveCapacity(names.count)
            var it = json_object_iter_begin(obj)
            var end = json_object_iter_end(obj)
            var k = 0
            while json_object_iter_equal(&it, &end) == 0 {
                // The scanner's name, checked against json-c's so no value lands under another key.
                let cName = String(cString: json_object_iter_peek_name(&it))
                guard cName.utf8.elementsEqual(names[k].utf8) else {
                    throw ScannerFeed.disagreement("json-c read key \"\(names[k].displayEscaped)\" as \"\(cName.displayEscaped)\"")
                }
                members.append((names[k], try convert(json_object_iter_peek_value(&it), feed: &feed)))
                json_object_iter_next(&it)
                k += 1
            }
            return .object(members)
        default:
            throw ScannerFeed.disagreement("json-c returned an unknown type")
        }
    }
}
