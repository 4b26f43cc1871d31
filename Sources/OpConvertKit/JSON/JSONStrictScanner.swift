/// A validating pass over JSON text with serde_json's rules: RFC 8259 grammar only (no
/// comments, single quotes, raw control characters, lone surrogates, leading zeros),
/// a nesting limit, and (our addition) no repeated key in any object. It records each
/// object's keys, decoded byte-exact, in document order.
struct JSONStrictScanner {
    let bytes: UnsafeRawBufferPointer
    let maxDepth: Int
    let rejectDuplicateKeys: Bool
    private(set) var objectKeys: [[String]] = []
    private var i = 0
    private var depth = 0

    init(bytes: UnsafeRawBufferPointer, maxDepth: Int, rejectDuplicateKeys: Bool) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.rejectDuplicateKeys = rejectDuplicateKeys
    }

    mutating func scan() throws(JSONParseError) {
        skipWhitespace()
        try value(context: nil)
        skipWhitespace()
        if i < bytes.count { throw fail("trailing characters after the JSON value") }
    }

    private func fail(_ what: String) -> JSONParseError {
        JSONParseError(message: "\(what) at byte \(i)")
    }

    private var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipWhitespace() {
        while let c = peek, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 }
    }

    private mutating func value(context: String?) throws(JSONParseError) {
        guard let c = peek else { throw fail("unexpected end of JSON text") }
        switch c {
        case UInt8(ascii: "{"): try object(context: context)
        case UInt8(ascii: "["): try array(context: context)
        case UInt8(ascii: "\""): _ = try string()
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number(context: context)
        default: throw fail("unexpected character '\(Unicode.Scalar(c))'")
        }
    }

    private mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth >= maxDepth { throw fail("recursion limit exceeded") }
    }

    private mutating func object(context: String?) throws(JSONParseError) {
        try enter()
        i += 1
        let slot = objectKeys.count
        objectKeys.append([])
        var seen = Set<[UInt8]>()
        skipWhitespace()
        if peek == UInt8(ascii: "}") { i += 1; depth -= 1; return }
        while true {
            skipWhitespace()
            guard peek == UInt8(ascii: "\"") else { throw fail("object key must be a string") }
            let key = try string()
            let name = String(decoding: key, as: UTF8.self)
            if rejectDuplicateKeys && !seen.insert(key).inserted {
                throw JSONParseError(message: "duplicate key \"\(name)\"" + (context.map { " in \"\($0)\"" } ?? ""))
            }
            objectKeys[slot].append(name)
            skipWhitespace()
            guard peek == UInt8(ascii: ":") else { throw fail("expected ':' after an object key") }
            i += 1
            skipWhitespace()
            try value(context: context ?? name)
            skipWhitespace()
            guard let c = peek else { throw fail("unexpected end of JSON text in an object") }
            i += 1
            if c == UInt8(ascii: "}") { break }
            guard c == UInt8(ascii: ",") else { i -= 1; throw fail("expected ',' or '}' in an object") }
        }
        depth -= 1
    }

    private mutating func array(context: String?) throws(JSONParseError) {
        try enter()
        i += 1
        skipWhitespace()
        if peek == UInt8(ascii: "]") { i += 1; depth -= 1; return }
        while true {
            skipWhitespace()
            try value(context: context)
            skipWhitespace()
            guard let c = peek else { throw fail("unexpected end of JSON text in an array") }
            i += 1
            if c == UInt8(ascii: "]") { break }
            guard c == UInt8(ascii: ",") else { i -= 1; throw fail("expected ',' or ']' in an array") }
        }
        depth -= 1
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        guard i + w.count <= bytes.count, (0..<w.count).allSatisfy({ bytes[i + $0] == w[$0] }) else {
            throw fail("invalid literal")
        }
        i += w.count
    }

    private mutating func number(context: String?) throws(JSONParseError) {
        let start = i
        if peek == UInt8(ascii: "-") { i += 1 }
        guard let first = peek, (0x30...0x39).contains(first) else { throw fail("invalid number") }
        i += 1
        if first != 0x30 { while let c = peek, (0x30...0x39).contains(c) { i += 1 } }
        var integral = true
        if peek == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard let c = peek, (0x30...0x39).contains(c) else { throw fail("invalid number") }
            while let c = peek, (0x30...0x39).contains(c) { i += 1 }
        }
        if let c = peek, c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
            integral = false
            i += 1
            if let s = peek, s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { i += 1 }
            guard let d = peek, (0x30...0x39).contains(d) else { throw fail("invalid number") }
            while let d = peek, (0x30...0x39).contains(d) { i += 1 }
        }
        // serde_json reads "-0" as a float; json-c would make it the integer 0.
        if integral && i - start == 2 && bytes[start] == UInt8(ascii: "-") && bytes[start + 1] == UInt8(ascii: "0") {
            throw JSONParseError(message: "-0 is a float, not an integer, at byte \(start)" + (context.map { " in \"\($0)\"" } ?? ""))
        }
    }

    /// Reads a string literal starting at the quote; returns its decoded UTF-8 bytes.
    private mutating func string() throws(JSONParseError) -> [UInt8] {
        i += 1
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw fail("unterminated string") }
            if c == UInt8(ascii: "\"") { i += 1; return out }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard let e = peek else { throw fail("unterminated escape") }
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xDC00..<0xE000).contains(scalar) { throw fail("lone trailing surrogate in hex escape") }
                if (0xD800..<0xDC00).contains(scalar) {
                    guard peek == UInt8(ascii: "\\"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone leading surrogate in hex escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("lone leading surrogate in hex escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
            default:
                throw fail("invalid escape")
            }
        }
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let c = peek else { throw fail("unexpected end of hex escape") }
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("invalid hex escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }
}
