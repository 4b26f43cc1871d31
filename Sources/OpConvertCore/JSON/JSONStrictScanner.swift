/// A validating pass over JSON text with serde_json's rules: RFC 8259 grammar only (no
/// comments, single quotes, raw control characters, lone surrogates, leading zeros),
/// a nesting limit, and (our additions) no repeated key in any object and no U+0000 in a
/// key. Names and numbers are decided here, from the text, never by json-c: json-c cuts
/// keys at NUL and clamps or rounds numbers it cannot hold.
///
/// `JSONParser` runs it in recording mode (each object's keys, each number's source span,
/// in document order); the safetensors header reader drives its primitives directly to
/// decode the header without building a tree.
package struct JSONStrictScanner {
    package let bytes: UnsafeRawBufferPointer
    let maxDepth: Int
    /// Record `objectKeys` and `numberSpans` (for pairing with json-c's tree).
    let recording: Bool
    private(set) var objectKeys: [[String]] = []
    private(set) var numberSpans: [Range<Int>] = []
    package var i = 0
    private(set) var depth = 0

    package init(bytes: UnsafeRawBufferPointer, maxDepth: Int, recording: Bool = false) {
        self.bytes = bytes
        self.maxDepth = maxDepth
        self.recording = recording
    }

    mutating func scan() throws(JSONParseError) {
        skipWhitespace()
        try value(context: nil)
        skipWhitespace()
        if i < bytes.count { throw fail("trailing characters after the JSON value") }
    }

    package func fail(_ what: String) -> JSONParseError { fail(what, at: i) }
    func fail(_ what: String, at offset: Int) -> JSONParseError {
        JSONParseError(message: "\(what) at byte \(offset)")
    }

    package var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    package mutating func skipWhitespace() {
        while i < bytes.count {
            let c = bytes[i]
            guard c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D else { return }
            i += 1
        }
    }

    /// Validates one value of any type (recording it in recording mode).
    package mutating func value(context: String?) throws(JSONParseError) {
        guard let c = peek else { throw fail("unexpected end of JSON text") }
        switch c {
        case UInt8(ascii: "{"): try object(context: context)
        case UInt8(ascii: "["): try array(context: context)
        case UInt8(ascii: "\""): _ = try stringSpan()
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): _ = try number(context: context)
        default: throw fail("unexpected character '\(Unicode.Scalar(c))'")
        }
    }

    package mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth >= maxDepth { throw fail("recursion limit exceeded") }
    }
    package mutating func leave() { depth -= 1 }

    package static func duplicateKey(_ name: String, context: String?) -> JSONParseError {
        JSONParseError(message: "duplicate key \"\(name.displayEscaped)\"" + (context.map { " in \"\($0.displayEscaped)\"" } ?? ""))
    }

    private mutating func object(context: String?) throws(JSONParseError) {
        try enter()
        i += 1
        let slot = objectKeys.count
        if recording { objectKeys.append([]) }
        var seen = Set<UTF8Key>()
        skipWhitespace()
        if peek == UInt8(ascii: "}") { i += 1; leave(); return }
        while true {
            skipWhitespace()
            let name = try key()
            if !seen.insert(UTF8Key(name)).inserted { throw Self.duplicateKey(name, context: context) }
            if recording { objectKeys[slot].append(name) }
            try colon()
            try value(context: context ?? name)
            if try endOfMember(closing: UInt8(ascii: "}"), in: "an object") { break }
        }
        leave()
    }

    private mutating func array(context: String?) throws(JSONParseError) {
        try enter()
        i += 1
        skipWhitespace()
        if peek == UInt8(ascii: "]") { i += 1; leave(); return }
        while true {
            skipWhitespace()
            try value(context: context)
            if try endOfMember(closing: UInt8(ascii: "]"), in: "an array") { break }
        }
        leave()
    }

    /// After a key: whitespace, ':', whitespace.
    package mutating func colon() throws(JSONParseError) {
        skipWhitespace()
        guard peek == UInt8(ascii: ":") else { throw fail("expected ':' after an object key") }
        i += 1
        skipWhitespace()
    }

    /// After a member or element: true at the closing bracket, false after a comma.
    package mutating func endOfMember(closing: UInt8, in what: String) throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard let c = peek else { throw fail("unexpected end of JSON text in \(what)") }
        if c == closing { i += 1; return true }
        guard c == UInt8(ascii: ",") else {
            throw fail("expected ',' or '\(Unicode.Scalar(closing))' in \(what)")
        }
        i += 1
        return false
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        guard i + w.count <= bytes.count, (0..<w.count).allSatisfy({ bytes[i + $0] == w[$0] }) else {
            throw fail("invalid literal")
        }
        i += w.count
    }

    /// Validates a number and returns its source span.
    package mutating func number(context: String?) throws(JSONParseError) -> Range<Int> {
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
            throw JSONParseError(message: "-0 is a float, not an integer, at byte \(start)" + (context.map { " in \"\($0.displayEscaped)\"" } ?? ""))
        }
        if recording { numberSpans.append(start..<i) }
        return start..<i
    }

    /// An object key, decoded; refused when it holds U+0000 (C strings, json-c among
    /// them, would cut it there and two keys could become one).
    package mutating func key() throws(JSONParseError) -> String {
        guard peek == UInt8(ascii: "\"") else { throw fail("object key must be a string") }
        let start = i
        let (span, escaped) = try stringSpan()
        let name = Self.decode(UnsafeRawBufferPointer(rebasing: bytes[span]), escaped: escaped)
        // Raw control characters are refused above, so only an escape can make a NUL.
        if escaped && name.utf8.contains(0) {
            throw fail("object key \"\(name.displayEscaped)\" contains U+0000 (NUL), which is refused in names", at: start)
        }
        return name
    }

    /// A string literal at the quote, decoded.
    package mutating func string() throws(JSONParseError) -> String {
        let (span, escaped) = try stringSpan()
        return Self.decode(UnsafeRawBufferPointer(rebasing: bytes[span]), escaped: escaped)
    }

    private static func decode(_ raw: UnsafeRawBufferPointer, escaped: Bool) -> String {
        guard escaped else { return String(decoding: raw, as: UTF8.self) }
        // Decoding never lengthens the text, so the source length bounds the result.
        return String(unsafeUninitializedCapacity: raw.count) { out in unescape(raw, into: out) }
    }

    /// Validates a string literal at the quote; returns the span between the quotes and
    /// whether it holds escapes.
    mutating func stringSpan() throws(JSONParseError) -> (Range<Int>, escaped: Bool) {
        i += 1
        let start = i
        var escaped = false
        while true {
            // Plain bytes first: the common case, and all of a long metadata value; eight at
            // a time while none is a quote, a backslash or a control character.
            while i + 8 <= bytes.count && !Self.mayEndPlainRun(bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                i += 8
            }
            while i < bytes.count {
                let c = bytes[i]
                if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") || c < 0x20 { break }
                i += 1
            }
            guard let c = peek else { throw fail("unterminated string") }
            if c == UInt8(ascii: "\"") { i += 1; return (start..<(i - 1), escaped) }
            if c < 0x20 { throw fail("control character in a string") }
            escaped = true
            i += 1
            guard let e = peek else { throw fail("unterminated escape") }
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                 UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                continue
            case UInt8(ascii: "u"):
                let scalar = try hex4()
                if (0xDC00..<0xE000).contains(scalar) { throw fail("lone trailing surrogate in hex escape") }
                if (0xD800..<0xDC00).contains(scalar) {
                    guard peek == UInt8(ascii: "\\"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone leading surrogate in hex escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("lone leading surrogate in hex escape") }
                }
            default:
                throw fail("invalid escape")
            }
        }
    }

    /// Whether any byte of `word` is '"', '\\' or below 0x20 (exact; bit tricks from
    /// "Bit Twiddling Hacks": a zero byte of x shows in (x - 0x01..) & ~x & 0x80..).
    @inline(__always) private static func mayEndPlainRun(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        func hasZeroByte(_ x: UInt64) -> Bool { (x &- ones) & ~x & highs != 0 }
        let below20 = (word &- ones &* 0x20) & ~word & highs != 0
        return below20 || hasZeroByte(word ^ (ones &* 0x22)) || hasZeroByte(word ^ (ones &* 0x5C))
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let c = peek, let d = Self.hexDigit(c) else {
                throw peek == nil ? fail("unexpected end of hex escape") : fail("invalid hex escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private static func hexDigit(_ c: UInt8) -> UInt32? {
        switch c {
        case 0x30...0x39: return UInt32(c - 0x30)
        case 0x41...0x46: return UInt32(c - 0x41 + 10)
        case 0x61...0x66: return UInt32(c - 0x61 + 10)
        default: return nil
        }
    }

    /// Decodes the body of a string literal that `stringSpan` validated; returns the
    /// UTF-8 length written.
    private static func unescape(_ raw: UnsafeRawBufferPointer, into out: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var r = 0, w = 0
        func put(_ b: UInt8) { out[w] = b; w += 1 }
        func hex(_ at: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 << 4 | hexDigit(raw[at + $1])! }
        }
        while r < raw.count {
            // Copy up to the next backslash in one go.
            var next = r
            while next + 8 <= raw.count {
                let x = raw.loadUnaligned(fromByteOffset: next, as: UInt64.self) ^ 0x5C5C_5C5C_5C5C_5C5C
                if (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080 != 0 { break }
                next += 8
            }
            while next < raw.count && raw[next] != UInt8(ascii: "\\") { next += 1 }
            if next > r {
                UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(out)[w..<(w + next - r)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[r..<next]))
                w += next - r
                r = next
                continue
            }
            let e = raw[r + 1]
            r += 2
            switch e {
            case UInt8(ascii: "b"): put(0x08)
            case UInt8(ascii: "f"): put(0x0C)
            case UInt8(ascii: "n"): put(0x0A)
            case UInt8(ascii: "r"): put(0x0D)
            case UInt8(ascii: "t"): put(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex(r)
                r += 4
                if (0xD800..<0xDC00).contains(scalar) {
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (hex(r + 2) - 0xDC00)
                    r += 6
                }
                for b in UTF8.encode(Unicode.Scalar(scalar)!)! { put(b) }
            default: put(e) // \" \\ \/
            }
        }
        return w
    }
}

/// A string compared and hashed by its UTF-8 bytes: names are distinct when their bytes
/// are (as in the reference), even when Swift would call them canonically equal.
package struct UTF8Key: Hashable, Sendable {
    package let string: String
    package init(_ string: String) { self.string = string }

    package static func == (a: UTF8Key, b: UTF8Key) -> Bool { a.string.utf8.elementsEqual(b.string.utf8) }

    package func hash(into hasher: inout Hasher) {
        var s = string
        s.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

package enum UTF8Validation {
    /// Offset of the first byte that is not part of valid UTF-8, or nil.
    package static func firstInvalidByte(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 0
        let n = bytes.count
        while i < n {
            // ASCII eight bytes at a time.
            if i + 8 <= n && bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                i += 8
                continue
            }
            let c = bytes[i]
            if c < 0x80 { i += 1; continue }
            let length: Int, low: UInt8, high: UInt8
            switch c {
            case 0xC2...0xDF: (length, low, high) = (2, 0x80, 0xBF)
            case 0xE0: (length, low, high) = (3, 0xA0, 0xBF)
            case 0xED: (length, low, high) = (3, 0x80, 0x9F)
            case 0xE1...0xEF: (length, low, high) = (3, 0x80, 0xBF)
            case 0xF0: (length, low, high) = (4, 0x90, 0xBF)
            case 0xF4: (length, low, high) = (4, 0x80, 0x8F)
            case 0xF1...0xF3: (length, low, high) = (4, 0x80, 0xBF)
            default: return i
            }
            guard i + length <= n else { return i }
            let second = bytes[i + 1]
            guard second >= low && second <= high else { return i }
            for k in 2..<max(2, length) where bytes[i + k] & 0xC0 != 0x80 { return i }
            i += length
        }
        return nil
    }
}

extension JSONStrictScanner {
    /// The members of a top-level object: each key and the source span of its value, for
    /// edits that must leave every other byte as it was. Nil when the text is not an object.
    static func topLevelMembers(of bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> [(key: String, value: Range<Int>)]? {
        var s = JSONStrictScanner(bytes: bytes, maxDepth: JSONParser.maxDepth)
        s.skipWhitespace()
        guard s.peek == UInt8(ascii: "{") else { return nil }
        try s.enter()
        s.i += 1
        var members: [(key: String, value: Range<Int>)] = []
        s.skipWhitespace()
        if s.peek == UInt8(ascii: "}") { return [] }
        while true {
            s.skipWhitespace()
            let name = try s.key()
            try s.colon()
            let start = s.i
            try s.value(context: name)
            members.append((name, start..<s.i))
            if try s.endOfMember(closing: UInt8(ascii: "}"), in: "an object") { break }
        }
        return members
    }

    package static func topLevelMembers(of bytes: [UInt8]) throws(JSONParseError) -> [(key: String, value: Range<Int>)]? {
        var result: Result<[(key: String, value: Range<Int>)]?, JSONParseError> = .success(nil)
        bytes.withUnsafeBytes { b in
            do throws(JSONParseError) { result = .success(try topLevelMembers(of: b)) } catch { result = .failure(error) }
        }
        return try result.get()
    }
}
