import OpConvertCore

/// A parsed and validated safetensors header.
public struct SafetensorsHeader: Sendable {
    /// Length N of the JSON header; the data buffer starts at byte 8 + N.
    public var headerLength: Int
    /// `__metadata__`, or nil when absent or null.
    public var metadata: [String: String]?
    /// Tensors in file order (by data offset; ties by name).
    public var tensors: [TensorInfo]
    /// Keyed by UTF-8 bytes: names are distinct when their bytes are (as in the reference),
    /// even when Swift would call them canonically equal.
    private var index: [UTF8Key: Int]

    public var dataStart: Int { 8 + headerLength }

    public func tensor(named name: String) -> TensorInfo? {
        index[UTF8Key(name)].map { tensors[$0] }
    }

    public var tensorNames: [String] { tensors.map(\.name) }

    /// The reference's limit on N (exactly this many bytes is still allowed).
    public static let maxHeaderLength: UInt64 = 100_000_000

    /// Parses and validates the header of a file of `fileSize` bytes whose first bytes are
    /// `prefix` (at least 8 + N of them when the length field is sane). The checks run in
    /// the reference implementation's order so the first error reported matches it: the
    /// length, UTF-8, JSON syntax, `__metadata__`, each entry in turn, then the layout.
    ///
    /// The JSON is decoded straight into entries by `HeaderDecoder` (no tree: a generic
    /// tree of the largest headers costs several times the reference's memory); names and
    /// numbers are the text's own, integers exact.
    public static func parse(prefix: UnsafeRawBufferPointer, fileSize: Int, file: String) throws(SafetensorsError) -> SafetensorsHeader {
        guard fileSize >= 8, prefix.count >= 8 else { throw .fileTooSmall(file: file, size: fileSize) }
        let n = prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        guard n <= maxHeaderLength else { throw .headerTooLarge(file: file, length: n) }
        let length = Int(n)
        guard 8 + length <= fileSize, 8 + length <= prefix.count else {
            throw .headerPastEndOfFile(file: file, length: n, fileSize: fileSize)
        }
        let json = UnsafeRawBufferPointer(rebasing: prefix[8..<(8 + length)])
        guard UTF8Validation.firstInvalidByte(json) == nil else { throw .headerNotUTF8(file: file) }
        var decoder = HeaderDecoder(json: json, file: file)
        do {
            try decoder.decode()
        } catch {
            throw .invalidJSON(file: file, reason: error.message)
        }
        if let kind = decoder.topLevelType {
            throw .invalidHeader(file: file, reason: "top level is a JSON \(kind), not an object")
        }
        // Repeated tensor names, found while indexing them (sized once, so no rehashing);
        // refused before any entry error, as the scanner refuses every repeated key.
        var index: [UTF8Key: Int] = [:]
        index.reserveCapacity(decoder.entries.count + decoder.unreadNames.count)
        func add(_ name: String, _ position: Int) throws(SafetensorsError) {
            if index.updateValue(position, forKey: UTF8Key(name)) != nil {
                throw .invalidJSON(file: file, reason: JSONStrictScanner.duplicateKey(name, context: nil).message)
            }
        }
        for (position, e) in decoder.entries.enumerated() { try add(e.name, position) }
        for name in decoder.unreadNames { try add(name, -1) }
        if let e = decoder.metadataError { throw e }
        if let e = decoder.entryError { throw e }
        let bufferSize = fileSize - 8 - length
        for k in decoder.entries.indices { decoder.entries[k].position = k }
        let tensors = try validateLayout(&decoder.entries, bufferSize: bufferSize, file: file)
        // Index by position in the sorted list.
        var sortedPosition = [Int](repeating: 0, count: decoder.entries.count)
        for (k, e) in decoder.entries.enumerated() { sortedPosition[e.position] = k }
        decoder.entries = []
        index = index.mapValues { sortedPosition[$0] }
        return SafetensorsHeader(headerLength: length, metadata: decoder.metadata, tensors: tensors, index: index)
    }

    private init(headerLength: Int, metadata: [String: String]?, tensors: [TensorInfo], index: [UTF8Key: Int]) {
        self.headerLength = headerLength
        self.metadata = metadata
        self.tensors = tensors
        self.index = index
    }

    /// A tensor entry as written, before the layout checks.
    fileprivate struct RawEntry {
        var name: String
        var dtype: DType
        var shape: [Int]
        var begin: Int
        var end: Int
        /// Position as written (before the layout sort).
        var position = 0
    }

    /// Offsets sorted must tile the buffer exactly: each begins where the previous ended,
    /// sizes match dtype x shape, and the last ends at the end of the file.
    fileprivate static func validateLayout(_ entries: inout [RawEntry], bufferSize: Int, file: String) throws(SafetensorsError) -> [TensorInfo] {
        entries.sort { a, b in
            if a.begin != b.begin { return a.begin < b.begin }
            if a.end != b.end { return a.end < b.end }
            // Ties are zero-sized tensors: list them as the reference writer orders them.
            if a.dtype != b.dtype { return a.dtype.rank > b.dtype.rank }
            return a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
        }
        var position = 0
        var out: [TensorInfo] = []
        out.reserveCapacity(entries.count)
        for t in entries {
            let begin = t.begin, end = t.end
            if begin != position {
                let why = begin > position
                    ? "begins at \(begin) but the previous tensor ends at \(position) (gap)"
                    : "begins at \(begin) but the previous tensor ends at \(position) (overlap)"
                throw .invalidOffsets(file: file, tensor: t.name, reason: why)
            }
            if end < begin {
                throw .invalidOffsets(file: file, tensor: t.name, reason: "end \(end) is before begin \(begin)")
            }
            guard let elements = elementCount(t.shape), let bytes = t.dtype.byteCount(elements: elements) else {
                if let elements = elementCount(t.shape), !elements.multipliedReportingOverflow(by: t.dtype.bitWidth).overflow {
                    throw .invalidTensorEntry(file: file, tensor: t.name, reason: "\(elements) elements of \(t.dtype.rawValue) is not a whole number of bytes")
                }
                throw .shapeOverflow(file: file, tensor: t.name)
            }
            // Zero-sized tensors pass the reference's count check whatever their other
            // dimensions, but numpy and torch refuse shapes whose strides overflow; so do we.
            var strideBits = t.dtype.bitWidth
            for d in t.shape where d > 0 {
                let (p, o) = strideBits.multipliedReportingOverflow(by: d)
                if o { throw .shapeOverflow(file: file, tensor: t.name) }
                strideBits = p
            }
            if end - begin != bytes {
                throw .sizeMismatch(file: file, tensor: t.name, expected: bytes, actual: end - begin)
            }
            position = end
            out.append(TensorInfo(name: t.name, dtype: t.dtype, shape: t.shape, dataOffsets: begin..<end))
        }
        if position != bufferSize {
            throw .bufferSizeMismatch(file: file, expected: position, actual: bufferSize)
        }
        return out
    }
}


/// Decodes a safetensors header's JSON as serde decodes the reference's typed structs:
/// syntax errors are thrown at once (in document order, with `JSONStrictScanner`'s rules),
/// while the first `__metadata__` error and the first bad tensor entry are kept and
/// reported after the whole text has proved to be JSON, as the reference orders them.
private struct HeaderDecoder {
    typealias RawEntry = SafetensorsHeader.RawEntry
    var s: JSONStrictScanner
    let file: String
    var topLevelType: String?
    var metadata: [String: String]?
    var metadataError: SafetensorsError?
    var entryError: SafetensorsError?
    var entries: [RawEntry] = []
    /// Names of the entries not decoded (the first bad one and all after it), still
    /// checked for repeats.
    var unreadNames: [String] = []

    init(json: UnsafeRawBufferPointer, file: String) {
        s = JSONStrictScanner(bytes: json, maxDepth: JSONParser.maxDepth)
        self.file = file
    }

    private static let quote = UInt8(ascii: "\""), openBrace = UInt8(ascii: "{"), closeBrace = UInt8(ascii: "}")
    private static let openBracket = UInt8(ascii: "["), closeBracket = UInt8(ascii: "]")

    mutating func decode() throws(JSONParseError) {
        s.skipWhitespace()
        if s.peek != Self.openBrace {
            topLevelType = try skipValue(context: nil)
        } else {
            try s.enter()
            s.i += 1
            // Repeated tensor names are found by the caller's index; only __metadata__ here.
            var sawMetadata = false
            s.skipWhitespace()
            if s.peek == Self.closeBrace {
                s.i += 1
            } else {
                while true {
                    s.skipWhitespace()
                    let name = try s.key()
                    try s.colon()
                    if name == "__metadata__" {
                        if sawMetadata { throw JSONStrictScanner.duplicateKey(name, context: nil) }
                        sawMetadata = true
                        try readMetadata()
                    } else {
                        try readEntry(name)
                    }
                    if try s.endOfMember(closing: Self.closeBrace, in: "an object") { break }
                }
            }
            s.leave()
        }
        s.skipWhitespace()
        if s.i < s.bytes.count { throw s.fail("trailing characters after the JSON value") }
    }

    /// Validates any value; returns its type's name for messages.
    private mutating func skipValue(context: String?) throws(JSONParseError) -> String {
        let start = s.i
        guard let c = s.peek else { throw s.fail("unexpected end of JSON text") }
        try s.value(context: context)
        switch c {
        case Self.openBrace: return "object"
        case Self.openBracket: return "array"
        case Self.quote: return "string"
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return "boolean"
        case UInt8(ascii: "n"): return "null"
        default: return JSONNumberText.value(UnsafeRawBufferPointer(rebasing: s.bytes[start..<s.i])).typeName
        }
    }

    /// Source text of a value, shortened for messages.
    private func text(_ range: Range<Int>) -> String {
        let t = String(decoding: UnsafeRawBufferPointer(rebasing: s.bytes[range]), as: UTF8.self)
        return t.count > 40 ? String(t.prefix(40)) + "..." : t
    }

    private mutating func readMetadata() throws(JSONParseError) {
        let context = "__metadata__"
        guard s.peek == Self.openBrace else {
            let kind = try skipValue(context: context)
            if kind != "null" && metadataError == nil {
                metadataError = .invalidHeader(file: file, reason: "__metadata__ is a \(kind); expected an object of strings")
            }
            return
        }
        try s.enter()
        s.i += 1
        var out: [String: String] = [:]
        var seen = Set<UTF8Key>()
        s.skipWhitespace()
        if s.peek == Self.closeBrace {
            s.i += 1
        } else {
            while true {
                s.skipWhitespace()
                let k = try s.key()
                if !seen.insert(UTF8Key(k)).inserted { throw JSONStrictScanner.duplicateKey(k, context: context) }
                try s.colon()
                if s.peek == Self.quote {
                    out[k] = try s.string()
                } else {
                    let kind = try skipValue(context: context)
                    if metadataError == nil {
                        metadataError = .invalidHeader(file: file, reason: "__metadata__ value for \"\(k.displayEscaped)\" is a \(kind); only strings are allowed")
                    }
                }
                if try s.endOfMember(closing: Self.closeBrace, in: "an object") { break }
            }
        }
        s.leave()
        metadata = metadataError == nil ? out : nil
    }

    /// What one field read: its value, or why it is not one (a message fragment).
    private enum Field<T> { case value(T), wrong(String) }

    /// Unsigned integers as written: exact; values above Int.max are noted (by their text)
    /// rather than clamped.
    private struct Integers {
        var values: [Int] = []
        var count = 0
        var firstTooLarge: String?
    }

    private mutating func readEntry(_ name: String) throws(JSONParseError) {
        // After the first bad entry the rest only has to be JSON.
        guard entryError == nil else { unreadNames.append(name); _ = try skipValue(context: name); return }
        var dtype: Field<String>?, shape: Field<Integers>?, offsets: Field<Integers>?
        switch s.peek {
        case Self.openBrace:
            try s.enter()
            s.i += 1
            var others: [UTF8Key] = []
            s.skipWhitespace()
            if s.peek == Self.closeBrace {
                s.i += 1
            } else {
                while true {
                    s.skipWhitespace()
                    let field = try s.key()
                    let repeated: Bool
                    switch field {
                    case "dtype": repeated = dtype != nil
                    case "shape": repeated = shape != nil
                    case "data_offsets": repeated = offsets != nil
                    default:
                        // Unknown fields are ignored, as serde does, but still may not repeat.
                        repeated = others.contains(UTF8Key(field))
                        others.append(UTF8Key(field))
                    }
                    if repeated { throw JSONStrictScanner.duplicateKey(field, context: name) }
                    try s.colon()
                    switch field {
                    case "dtype": dtype = try readDType(context: name)
                    case "shape": shape = try readIntegers(field: "shape", context: name)
                    case "data_offsets": offsets = try readIntegers(field: "data_offsets", context: name)
                    default: _ = try skipValue(context: name)
                    }
                    if try s.endOfMember(closing: Self.closeBrace, in: "an object") { break }
                }
            }
            s.leave()
        case Self.openBracket:
            // serde also reads a struct from a [dtype, shape, data_offsets] array; so does
            // the reference, so we accept it too.
            try s.enter()
            s.i += 1
            var count = 0
            s.skipWhitespace()
            if s.peek == Self.closeBracket {
                s.i += 1
            } else {
                while true {
                    s.skipWhitespace()
                    switch count {
                    case 0: dtype = try readDType(context: name)
                    case 1: shape = try readIntegers(field: "shape", context: name)
                    case 2: offsets = try readIntegers(field: "data_offsets", context: name)
                    default: _ = try skipValue(context: name)
                    }
                    count += 1
                    if try s.endOfMember(closing: Self.closeBracket, in: "an array") { break }
                }
            }
            s.leave()
            guard count == 3 else {
                entryError = .invalidTensorEntry(file: file, tensor: name, reason: "entry is a array, expected an object with dtype, shape and data_offsets")
                unreadNames.append(name)
                return
            }
        default:
            let kind = try skipValue(context: name)
            entryError = .invalidTensorEntry(file: file, tensor: name, reason: "entry is a \(kind), expected an object with dtype, shape and data_offsets")
            unreadNames.append(name)
            return
        }
        switch Self.entry(name: name, dtype: dtype, shape: shape, offsets: offsets, file: file) {
        case let .success(e): entries.append(e)
        case let .failure(e): entryError = e; unreadNames.append(name)
        }
    }

    private static func entry(name: String, dtype: Field<String>?, shape: Field<Integers>?, offsets: Field<Integers>?,
                              file: String) -> Result<RawEntry, SafetensorsError> {
        func bad(_ reason: String) -> Result<RawEntry, SafetensorsError> { .failure(.invalidTensorEntry(file: file, tensor: name, reason: reason)) }
        guard let dtype else { return bad("missing field \"dtype\"") }
        guard case let .value(dtypeName) = dtype else { if case let .wrong(why) = dtype { return bad(why) }; return bad("") }
        guard let shape else { return bad("missing field \"shape\"") }
        guard let offsets else { return bad("missing field \"data_offsets\"") }
        guard case let .value(dims) = shape else { if case let .wrong(why) = shape { return bad(why) }; return bad("") }
        guard case let .value(range) = offsets else { if case let .wrong(why) = offsets { return bad(why) }; return bad("") }
        guard range.count == 2 else { return bad("data_offsets has \(range.count) elements, expected 2") }
        guard let type = DType(rawValue: dtypeName) else { return .failure(.unknownDType(file: file, tensor: name, dtype: dtypeName)) }
        // Values beyond Int.max cannot be valid offsets or dimensions in a real file.
        if let big = range.firstTooLarge {
            return .failure(.invalidOffsets(file: file, tensor: name, reason: "offset \(big) is beyond any file size"))
        }
        if dims.firstTooLarge != nil { return .failure(.shapeOverflow(file: file, tensor: name)) }
        return .success(RawEntry(name: name, dtype: type, shape: dims.values, begin: range.values[0], end: range.values[1]))
    }

    private mutating func readDType(context: String) throws(JSONParseError) -> Field<String> {
        switch s.peek {
        case Self.quote:
            return .value(try s.string())
        case Self.openBrace:
            // serde's externally tagged form {"F32": null}.
            try s.enter()
            s.i += 1
            var names: [UTF8Key] = []
            var allNull = true
            s.skipWhitespace()
            if s.peek == Self.closeBrace {
                s.i += 1
            } else {
                while true {
                    s.skipWhitespace()
                    let k = try s.key()
                    if names.contains(UTF8Key(k)) { throw JSONStrictScanner.duplicateKey(k, context: context) }
                    names.append(UTF8Key(k))
                    try s.colon()
                    if try skipValue(context: context) != "null" { allNull = false }
                    if try s.endOfMember(closing: Self.closeBrace, in: "an object") { break }
                }
            }
            s.leave()
            if names.count == 1 && allNull { return .value(names[0].string) }
            return .wrong("dtype is a object, expected a string")
        default:
            return .wrong("dtype is a \(try skipValue(context: context)), expected a string")
        }
    }

    private mutating func readIntegers(field: String, context: String) throws(JSONParseError) -> Field<Integers> {
        guard s.peek == Self.openBracket else {
            return .wrong("\(field) is a \(try skipValue(context: context)), expected an array of non-negative integers")
        }
        try s.enter()
        s.i += 1
        var out = Integers()
        out.values.reserveCapacity(countOfPlainNumbers())
        var wrong: String?
        s.skipWhitespace()
        if s.peek == Self.closeBracket {
            s.i += 1
        } else {
            while true {
                s.skipWhitespace()
                let start = s.i
                let c = s.peek
                if let c, c >= 0x30 && c <= 0x39 {
                    let span = try s.number(context: context)
                    let digits = UnsafeRawBufferPointer(rebasing: s.bytes[span])
                    if !JSONNumberText.isIntegral(utf8: digits) {
                        if wrong == nil { wrong = text(span) }
                    } else if let v = JSONNumberText.unsigned(digits), v <= UInt64(Int.max) {
                        out.values.append(Int(v))
                    } else if out.firstTooLarge == nil {
                        out.firstTooLarge = text(span)
                    }
                } else {
                    _ = try skipValue(context: context)
                    if wrong == nil { wrong = text(start..<s.i) }
                }
                out.count += 1
                if try s.endOfMember(closing: Self.closeBracket, in: "an array") { break }
            }
        }
        s.leave()
        if let wrong { return .wrong("\(field) contains \(wrong), expected non-negative integers") }
        return .value(out)
    }

    /// Elements of the array starting here when it holds only digits (a shape of 50M
    /// dimensions then takes 8 bytes each, with no growth copies); 0 otherwise.
    private func countOfPlainNumbers() -> Int {
        var k = s.i, commas = 0
        while k < s.bytes.count {
            let c = s.bytes[k]
            if c == Self.closeBracket { return commas + 1 }
            if c == UInt8(ascii: ",") { commas += 1 } else if !(c >= 0x30 && c <= 0x39) && c != 0x20 { return 0 }
            k += 1
        }
        return 0
    }
}
