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
    private var index: [[UInt8]: Int]

    public var dataStart: Int { 8 + headerLength }

    public func tensor(named name: String) -> TensorInfo? {
        index[Array(name.utf8)].map { tensors[$0] }
    }

    public var tensorNames: [String] { tensors.map(\.name) }

    /// The reference's limit on N (exactly this many bytes is still allowed).
    public static let maxHeaderLength: UInt64 = 100_000_000

    /// Parses and validates the header of a file of `fileSize` bytes whose first bytes are
    /// `prefix` (at least 8 + N of them when the length field is sane). The checks run in
    /// the reference implementation's order so the first error reported matches it.
    public static func parse(prefix: UnsafeRawBufferPointer, fileSize: Int, file: String) throws(SafetensorsError) -> SafetensorsHeader {
        guard fileSize >= 8, prefix.count >= 8 else { throw .fileTooSmall(file: file, size: fileSize) }
        let n = prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        guard n <= maxHeaderLength else { throw .headerTooLarge(file: file, length: n) }
        let length = Int(n)
        guard 8 + length <= fileSize, 8 + length <= prefix.count else {
            throw .headerPastEndOfFile(file: file, length: n, fileSize: fileSize)
        }
        let json = UnsafeRawBufferPointer(rebasing: prefix[8..<(8 + length)])
        guard isValidUTF8(json) else { throw .headerNotUTF8(file: file) }
        let root: JSONValue
        do {
            root = try JSONParser.parse(json)
        } catch {
            throw .invalidJSON(file: file, reason: error.message)
        }
        guard case let .object(members) = root else {
            throw .invalidHeader(file: file, reason: "top level is a JSON \(root.typeName), not an object")
        }

        var metadata: [String: String]?
        var entries: [RawEntry] = []
        entries.reserveCapacity(members.count)
        // The reference type-checks __metadata__ before any tensor entry.
        if let m = members.first(where: { $0.0 == "__metadata__" }) {
            metadata = try parseMetadata(m.1, file: file)
        }
        for (key, value) in members where key != "__metadata__" {
            entries.append(try parseEntry(name: key, value: value, file: file))
        }
        let bufferSize = fileSize - 8 - length
        let tensors = try validateLayout(&entries, bufferSize: bufferSize, file: file)
        var index: [[UInt8]: Int] = [:]
        index.reserveCapacity(entries.count)
        for (i, t) in tensors.enumerated() { index[Array(t.name.utf8)] = i }
        return SafetensorsHeader(headerLength: length, metadata: metadata, tensors: tensors, index: index)
    }

    private init(headerLength: Int, metadata: [String: String]?, tensors: [TensorInfo], index: [[UInt8]: Int]) {
        self.headerLength = headerLength
        self.metadata = metadata
        self.tensors = tensors
        self.index = index
    }

    private static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    private static func parseMetadata(_ value: JSONValue, file: String) throws(SafetensorsError) -> [String: String]? {
        switch value {
        case .null:
            return nil
        case let .object(pairs):
            var out: [String: String] = [:]
            for (k, v) in pairs {
                guard case let .string(s) = v else {
                    throw .invalidHeader(file: file, reason: "__metadata__ value for \"\(k)\" is a \(v.typeName); only strings are allowed")
                }
                out[k] = s
            }
            return out
        default:
            throw .invalidHeader(file: file, reason: "__metadata__ is a \(value.typeName); expected an object of strings")
        }
    }

    /// A tensor entry as written, before the layout checks.
    private struct RawEntry {
        var name: String
        var dtype: DType
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    private static func parseEntry(name: String, value: JSONValue, file: String) throws(SafetensorsError) -> RawEntry {
        // serde also reads a struct from a [dtype, shape, data_offsets] array; so does the
        // reference, so we accept it too.
        let fields: [String: JSONValue]
        switch value {
        case let .object(members):
            fields = Dictionary(members, uniquingKeysWith: { $1 })
        case let .array(items) where items.count == 3:
            fields = ["dtype": items[0], "shape": items[1], "data_offsets": items[2]]
        default:
            throw .invalidTensorEntry(file: file, tensor: name, reason: "entry is a \(value.typeName), expected an object with dtype, shape and data_offsets")
        }
        guard let dtypeValue = fields["dtype"] else { throw .invalidTensorEntry(file: file, tensor: name, reason: "missing field \"dtype\"") }
        let dtypeName: String
        switch dtypeValue {
        case let .string(s): dtypeName = s
        case let .object(m) where m.count == 1 && m[0].1 == .null:
            dtypeName = m[0].0 // serde's externally tagged form {"F32": null}
        default:
            throw .invalidTensorEntry(file: file, tensor: name, reason: "dtype is a \(dtypeValue.typeName), expected a string")
        }
        guard let shapeValue = fields["shape"] else { throw .invalidTensorEntry(file: file, tensor: name, reason: "missing field \"shape\"") }
        guard let offsetsValue = fields["data_offsets"] else { throw .invalidTensorEntry(file: file, tensor: name, reason: "missing field \"data_offsets\"") }
        let shape = try unsignedArray(shapeValue, field: "shape", tensor: name, file: file)
        let offsets = try unsignedArray(offsetsValue, field: "data_offsets", tensor: name, file: file)
        guard offsets.count == 2 else {
            throw .invalidTensorEntry(file: file, tensor: name, reason: "data_offsets has \(offsets.count) elements, expected 2")
        }
        guard let dtype = DType(rawValue: dtypeName) else { throw .unknownDType(file: file, tensor: name, dtype: dtypeName) }
        // Values beyond Int.max cannot be valid offsets or dimensions in a real file: they are
        // caught as overflow below (clamped here so the range stays well-formed).
        let begin = offsets[0], end = offsets[1]
        guard begin <= UInt64(Int.max), end <= UInt64(Int.max) else {
            throw .invalidOffsets(file: file, tensor: name, reason: "offset \(max(begin, end)) is beyond any file size")
        }
        guard let dims = Optional(shape.map { $0 > UInt64(Int.max) ? -1 : Int($0) }), !dims.contains(-1) else {
            throw .shapeOverflow(file: file, tensor: name)
        }
        return RawEntry(name: name, dtype: dtype, shape: dims, begin: Int(begin), end: Int(end))
    }

    private static func unsignedArray(_ value: JSONValue, field: String, tensor: String, file: String) throws(SafetensorsError) -> [UInt64] {
        guard case let .array(items) = value else {
            throw .invalidTensorEntry(file: file, tensor: tensor, reason: "\(field) is a \(value.typeName), expected an array of non-negative integers")
        }
        var out: [UInt64] = []
        out.reserveCapacity(items.count)
        for item in items {
            switch item {
            case let .int(i) where i >= 0: out.append(UInt64(i))
            case let .uint(u): out.append(u)
            default:
                throw .invalidTensorEntry(file: file, tensor: tensor, reason: "\(field) contains \(JSONWriter.serialize(item)), expected non-negative integers")
            }
        }
        return out
    }

    /// Offsets sorted must tile the buffer exactly: each begins where the previous ended,
    /// sizes match dtype x shape, and the last ends at the end of the file.
    private static func validateLayout(_ entries: inout [RawEntry], bufferSize: Int, file: String) throws(SafetensorsError) -> [TensorInfo] {
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

