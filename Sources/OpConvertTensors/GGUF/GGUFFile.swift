import Foundation
import OpConvertCore

/// GGUF, the container of llama.cpp's models and adapters (v3; v2 reads the same way), little
/// endian: magic "GGUF", version u32, tensor_count u64, kv_count u64, the metadata key/value
/// pairs, the tensor infos (name, n_dims, ne[] in ggml order, type, offset), padding to
/// `general.alignment` (default 32), then the data section. The package's C libraries do not
/// read GGUF, so the container is parsed here; every count, length and offset is checked
/// against the file size before it is used, so any byte string gives an error, never a trap.

/// Problems with a GGUF file: malformed (exit 65), valid but beyond what opconvert reads (69),
/// or a writer bug (1).
public enum GGUFError: CategorizedError, Sendable, Equatable {
    case malformed(path: String, reason: String)
    case unsupported(path: String, reason: String)
    /// A writer handed the wrong number of bytes for a tensor (a bug, exit 1).
    case `internal`(path: String, reason: String)

    public var category: ErrorCategory {
        switch self {
        case .malformed: return .malformedInput
        case .unsupported: return .unsupported
        case .internal: return .internal
        }
    }

    public var description: String {
        switch self {
        case let .malformed(p, r): return "\(p): malformed GGUF file: \(r)"
        case let .unsupported(p, r): return "\(p): unsupported GGUF file: \(r)"
        case let .internal(p, r): return "\(p): internal error writing GGUF: \(r)"
        }
    }
}

/// The type of a metadata value, as GGUF numbers them.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, bool = 7, string = 8, array = 9
    case u64 = 10, i64 = 11, f64 = 12

    /// Bytes of one value; strings and arrays have a length prefix (their minimum size).
    var minimumSize: Int {
        switch self {
        case .u8, .i8, .bool: return 1
        case .u16, .i16: return 2
        case .u32, .i32, .f32: return 4
        case .u64, .i64, .f64, .string: return 8
        case .array: return 12
        }
    }

    public var name: String {
        switch self {
        case .u8: return "u8"
        case .i8: return "i8"
        case .u16: return "u16"
        case .i16: return "i16"
        case .u32: return "u32"
        case .i32: return "i32"
        case .f32: return "f32"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        case .u64: return "u64"
        case .i64: return "i64"
        case .f64: return "f64"
        }
    }
}

/// One metadata value.
public indirect enum GGUFValue: Sendable, Equatable {
    case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), f32(Float), bool(Bool)
    case string(String)
    /// Elements all of `of`; nested arrays are allowed.
    case array(of: GGUFValueType, [GGUFValue])
    case u64(UInt64), i64(Int64), f64(Double)

    public var type: GGUFValueType {
        switch self {
        case .u8: return .u8
        case .i8: return .i8
        case .u16: return .u16
        case .i16: return .i16
        case .u32: return .u32
        case .i32: return .i32
        case .f32: return .f32
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        case .u64: return .u64
        case .i64: return .i64
        case .f64: return .f64
        }
    }

    public var stringValue: String? { if case let .string(s) = self { return s } else { return nil } }

    /// Integer values of any width (nil for others, and for u64 beyond Int).
    public var intValue: Int? {
        switch self {
        case let .u8(v): return Int(v)
        case let .i8(v): return Int(v)
        case let .u16(v): return Int(v)
        case let .i16(v): return Int(v)
        case let .u32(v): return Int(v)
        case let .i32(v): return Int(v)
        case let .u64(v): return v <= UInt64(Int.max) ? Int(v) : nil
        case let .i64(v): return Int(v)
        default: return nil
        }
    }

    /// Numeric values as a Double (integers and floats).
    public var doubleValue: Double? {
        switch self {
        case let .f32(v): return Double(v)
        case let .f64(v): return v
        case let .u64(v): return Double(v)
        default: return intValue.map(Double.init)
        }
    }

    /// Short text for inspect: scalars as values, strings quoted, arrays by type and length
    /// (with their first elements).
    public var summary: String {
        switch self {
        case let .u8(v): return "\(v)"
        case let .i8(v): return "\(v)"
        case let .u16(v): return "\(v)"
        case let .i16(v): return "\(v)"
        case let .u32(v): return "\(v)"
        case let .i32(v): return "\(v)"
        case let .f32(v): return "\(v)"
        case let .bool(v): return "\(v)"
        case let .string(s): return s.count > 200 ? String(s.prefix(200)) + "..." : s
        case let .u64(v): return "\(v)"
        case let .i64(v): return "\(v)"
        case let .f64(v): return "\(v)"
        case let .array(t, items):
            let head = items.prefix(8).map { $0.type == .string ? "\"\($0.summary)\"" : $0.summary }.joined(separator: ", ")
            return "[\(t.name) × \(items.count)]" + (items.isEmpty ? "" : " [\(head)\(items.count > 8 ? ", ..." : "")]")
        }
    }
}

/// A ggml tensor type. The float types F32, F16, BF16 are decoded; the others (quantized,
/// integer) are known by name and size so that a file holding them can still be listed.
public struct GGUFTensorType: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public let name: String
    /// Elements per block and bytes per block (1 element for the plain types).
    public let blockElements: Int
    public let blockBytes: Int

    public static let f32 = GGUFTensorType(rawValue: 0, name: "F32", blockElements: 1, blockBytes: 4)
    public static let f16 = GGUFTensorType(rawValue: 1, name: "F16", blockElements: 1, blockBytes: 2)
    public static let bf16 = GGUFTensorType(rawValue: 30, name: "BF16", blockElements: 1, blockBytes: 2)

    /// Every type ggml defines today (ids 4, 5, 31-33, 36-38 were removed from ggml).
    public static let known: [GGUFTensorType] = [
        .f32, .f16,
        .init(rawValue: 2, name: "Q4_0", blockElements: 32, blockBytes: 18),
        .init(rawValue: 3, name: "Q4_1", blockElements: 32, blockBytes: 20),
        .init(rawValue: 6, name: "Q5_0", blockElements: 32, blockBytes: 22),
        .init(rawValue: 7, name: "Q5_1", blockElements: 32, blockBytes: 24),
        .init(rawValue: 8, name: "Q8_0", blockElements: 32, blockBytes: 34),
        .init(rawValue: 9, name: "Q8_1", blockElements: 32, blockBytes: 40),
        .init(rawValue: 10, name: "Q2_K", blockElements: 256, blockBytes: 84),
        .init(rawValue: 11, name: "Q3_K", blockElements: 256, blockBytes: 110),
        .init(rawValue: 12, name: "Q4_K", blockElements: 256, blockBytes: 144),
        .init(rawValue: 13, name: "Q5_K", blockElements: 256, blockBytes: 176),
        .init(rawValue: 14, name: "Q6_K", blockElements: 256, blockBytes: 210),
        .init(rawValue: 15, name: "Q8_K", blockElements: 256, blockBytes: 292),
        .init(rawValue: 16, name: "IQ2_XXS", blockElements: 256, blockBytes: 66),
        .init(rawValue: 17, name: "IQ2_XS", blockElements: 256, blockBytes: 74),
        .init(rawValue: 18, name: "IQ3_XXS", blockElements: 256, blockBytes: 98),
        .init(rawValue: 19, name: "IQ1_S", blockElements: 256, blockBytes: 50),
        .init(rawValue: 20, name: "IQ4_NL", blockElements: 32, blockBytes: 18),
        .init(rawValue: 21, name: "IQ3_S", blockElements: 256, blockBytes: 110),
        .init(rawValue: 22, name: "IQ2_S", blockElements: 256, blockBytes: 82),
        .init(rawValue: 23, name: "IQ4_XS", blockElements: 256, blockBytes: 136),
        .init(rawValue: 24, name: "I8", blockElements: 1, blockBytes: 1),
        .init(rawValue: 25, name: "I16", blockElements: 1, blockBytes: 2),
        .init(rawValue: 26, name: "I32", blockElements: 1, blockBytes: 4),
        .init(rawValue: 27, name: "I64", blockElements: 1, blockBytes: 8),
        .init(rawValue: 28, name: "F64", blockElements: 1, blockBytes: 8),
        .init(rawValue: 29, name: "IQ1_M", blockElements: 256, blockBytes: 56),
        .bf16,
        .init(rawValue: 34, name: "TQ1_0", blockElements: 256, blockBytes: 54),
        .init(rawValue: 35, name: "TQ2_0", blockElements: 256, blockBytes: 66),
        .init(rawValue: 39, name: "MXFP4", blockElements: 32, blockBytes: 17),
        .init(rawValue: 40, name: "NVFP4", blockElements: 64, blockBytes: 36),
        .init(rawValue: 41, name: "Q1_0", blockElements: 128, blockBytes: 18),
    ]

    public static func type(_ raw: UInt32) -> GGUFTensorType? { known.first { $0.rawValue == raw } }

    /// The safetensors dtype with the same element encoding, where there is one.
    public var dtype: DType? {
        switch rawValue {
        case 0: return .f32
        case 1: return .f16
        case 30: return .bf16
        case 24: return .i8
        case 25: return .i16
        case 26: return .i32
        case 27: return .i64
        case 28: return .f64
        default: return nil
        }
    }

    /// F32, F16 and BF16: the types opconvert decodes and writes.
    public var isFloat: Bool { rawValue == 0 || rawValue == 1 || rawValue == 30 }

    public var description: String { name }
}

/// One tensor of a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    /// ne[] in ggml order: dims[0] is the contiguous (row) dimension.
    public var dims: [Int]
    public var type: GGUFTensorType
    /// Offset from the start of the data section.
    public var offset: Int
    public var byteCount: Int

    /// The shape as numpy / safetensors give it (row-major, outermost first).
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A GGUF file, memory-mapped; tensor data are views into the mapping.
public final class GGUFFile: Sendable {
    public static let magic: [UInt8] = Array("GGUF".utf8)
    public static let defaultAlignment = 32
    /// ggml's GGML_MAX_DIMS.
    static let maxDims = 4
    /// Nesting depth of arrays in arrays that we accept (real files use 1).
    static let maxArrayDepth = 8

    public let path: String
    public let version: UInt32
    /// Every key/value pair, in file order.
    public let metadata: [(key: String, value: GGUFValue)]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// File offset of the data section.
    public let dataStart: Int
    /// The file (nil when parsed from bytes held by the caller).
    private let file: MappedFile?

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        let parsed = try Self.parse(file.bytes, path: path)
        self.path = path
        self.file = file
        version = parsed.version
        metadata = parsed.metadata
        tensors = parsed.tensors
        alignment = parsed.alignment
        dataStart = parsed.dataStart
    }

    /// Whether `path` is a regular file starting with "GGUF" (cheap: reads 4 bytes).
    public static func hasMagic(_ path: String) -> Bool {
        guard FileSystem.isRegularFile(path), let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 4)).map { [UInt8]($0) } == magic
    }

    public func value(_ key: String) -> GGUFValue? { metadata.first { $0.key == key }?.value }

    public func tensor(named name: String) -> GGUFTensorInfo? { tensors.first { $0.name == name } }

    /// The bytes of a tensor (bounds were checked when the file was parsed).
    public func data(_ t: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        guard let file, t.byteCount > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: file.bytes[(dataStart + t.offset)..<(dataStart + t.offset + t.byteCount)])
    }

    /// A float tensor's values decoded to f32 (F32, F16, BF16); other types are refused.
    public func floats(_ t: GGUFTensorInfo) throws -> [Float] {
        guard t.type.isFloat, let dtype = t.type.dtype else {
            throw GGUFError.unsupported(path: path, reason: "tensor \(t.name) has type \(t.type.name); opconvert reads only F32, F16 and BF16 tensors (no quantized ones)")
        }
        let src = data(t)
        let n = t.elementCount
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            if n > 0, let base = src.baseAddress { DTypeConversion.decode(base, dtype, to: buf.baseAddress!, count: n) }
            count = n
        }
    }

    // MARK: parsing

    package struct Parsed {
        var version: UInt32
        var metadata: [(key: String, value: GGUFValue)]
        package var tensors: [GGUFTensorInfo]
        var alignment: Int
        package var dataStart: Int
    }

    /// Parses a whole GGUF file held in `bytes`; `path` only names it in errors.
    package static func parse(_ bytes: UnsafeRawBufferPointer, path: String) throws(GGUFError) -> Parsed {
        var r = ByteReader(bytes: bytes, path: path)
        guard bytes.count >= 4, Array(bytes.prefix(4)) == magic else {
            throw .malformed(path: path, reason: "it does not start with the GGUF magic")
        }
        r.position = 4
        let version = try r.u32("the version")
        if version == 0x0300_0000 || version == 0x0200_0000 {
            throw .unsupported(path: path, reason: "it is a big-endian GGUF file; opconvert reads little-endian GGUF only")
        }
        if version == 1 { throw .unsupported(path: path, reason: "GGUF version 1 (32-bit counts) is not supported; versions 2 and 3 are") }
        guard version == 2 || version == 3 else {
            throw .unsupported(path: path, reason: "GGUF version \(version); opconvert reads versions 2 and 3")
        }
        let tensorCount = try r.count("the tensor count", minimumSize: 24)
        let kvCount = try r.count("the metadata count", minimumSize: 13)
        var metadata: [(key: String, value: GGUFValue)] = []
        var keys = Set<String>()
        for i in 0..<kvCount {
            let key = try r.string("metadata key \(i)")
            guard !key.isEmpty else { throw .malformed(path: path, reason: "metadata key \(i) is empty") }
            guard keys.insert(key).inserted else { throw .malformed(path: path, reason: "metadata key \(key) appears twice") }
            let rawType = try r.u32("the type of \(key)")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw .malformed(path: path, reason: "metadata \(key) has unknown value type \(rawType)")
            }
            metadata.append((key, try r.value(type, what: key, depth: 0)))
        }
        var alignment = defaultAlignment
        if let a = metadata.first(where: { $0.key == "general.alignment" })?.value {
            guard case let .u32(v) = a else {
                throw .malformed(path: path, reason: "general.alignment has type \(a.type.name), expected u32")
            }
            guard v > 0, v & (v - 1) == 0 else {
                throw .malformed(path: path, reason: "general.alignment is \(v), expected a power of two")
            }
            alignment = Int(v)
        }
        var tensors: [GGUFTensorInfo] = []
        var names = Set<String>()
        for i in 0..<tensorCount {
            let name = try r.string("the name of tensor \(i)")
            guard names.insert(name).inserted else { throw .malformed(path: path, reason: "tensor \(name) appears twice") }
            let nDims = try r.u32("the dimension count of \(name)")
            guard nDims >= 1, nDims <= UInt32(maxDims) else {
                throw .malformed(path: path, reason: "tensor \(name) has \(nDims) dimensions (1 to \(maxDims) allowed)")
            }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let ne = try r.u64("dimension \(d) of \(name)")
                // Each dimension and the element count must fit easily in the file's bytes.
                guard ne <= UInt64(Int32.max) else {
                    throw .malformed(path: path, reason: "tensor \(name) has dimension \(d) = \(ne), too large")
                }
                dims.append(Int(ne))
            }
            let rawType = try r.u32("the type of \(name)")
            guard let type = GGUFTensorType.type(rawType) else {
                throw .malformed(path: path, reason: "tensor \(name) has unknown ggml type \(rawType)")
            }
            let offset = try r.u64("the offset of \(name)")
            var elements = 1
            for d in dims {
                let (p, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow, p <= bytes.count * max(1, type.blockElements) else {
                    throw .malformed(path: path, reason: "tensor \(name) with ggml shape \(dims) has more elements than the file has bytes")
                }
                elements = p
            }
            guard dims[0] % type.blockElements == 0 else {
                throw .malformed(path: path, reason: "tensor \(name) of type \(type.name) has row size \(dims[0]), not a multiple of its block size \(type.blockElements)")
            }
            let byteCount = elements / type.blockElements * type.blockBytes
            guard offset <= UInt64(bytes.count), Int(offset) % alignment == 0 else {
                throw .malformed(path: path, reason: "tensor \(name) has offset \(offset), beyond the file or not a multiple of the alignment \(alignment)")
            }
            tensors.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: Int(offset), byteCount: byteCount))
        }
        let dataStart = (r.position + alignment - 1) / alignment * alignment
        for t in tensors {
            let (end, overflow) = (dataStart + t.offset).addingReportingOverflow(t.byteCount)
            guard !overflow, end <= bytes.count else {
                throw .malformed(path: path, reason: "tensor \(t.name) (\(t.byteCount) bytes at data offset \(t.offset)) extends past the end of the file (\(bytes.count) bytes; truncated?)")
            }
        }
        // Overlapping tensors would make one tensor's bytes another's.
        let sorted = tensors.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw .malformed(path: path, reason: "tensors \(a.name) and \(b.name) overlap in the data section")
        }
        return Parsed(version: version, metadata: metadata, tensors: tensors, alignment: alignment, dataStart: dataStart)
    }
}

/// Reads little-endian values from a byte buffer, every read bounds-checked.
private struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var position = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - position }

    mutating func take<T: FixedWidthInteger>(_: T.Type, _ what: String) throws(GGUFError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else {
            throw .malformed(path: path, reason: "the file ends inside \(what) (at byte \(position) of \(bytes.count); truncated?)")
        }
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: T.self))
        position += size
        return v
    }

    mutating func u32(_ what: String) throws(GGUFError) -> UInt32 { try take(UInt32.self, what) }
    mutating func u64(_ what: String) throws(GGUFError) -> UInt64 { try take(UInt64.self, what) }

    /// A u64 count of items of at least `minimumSize` bytes each, checked against the bytes left.
    mutating func count(_ what: String, minimumSize: Int) throws(GGUFError) -> Int {
        let n = try u64(what)
        guard n <= UInt64(remaining / minimumSize) else {
            throw .malformed(path: path, reason: "\(what) is \(n), more than the \(remaining) bytes left can hold")
        }
        return Int(n)
    }

    mutating func string(_ what: String) throws(GGUFError) -> String {
        let n = try u64("the length of \(what)")
        guard n <= UInt64(remaining) else {
            throw .malformed(path: path, reason: "\(what) has length \(n), past the end of the file (\(remaining) bytes left)")
        }
        let raw = UnsafeRawBufferPointer(rebasing: bytes[position..<(position + Int(n))])
        position += Int(n)
        // Decoding replaces invalid sequences with U+FFFD, so a round trip tells them apart
        // (String(validating:) needs macOS 15).
        let s = String(decoding: raw, as: UTF8.self)
        guard s.utf8.elementsEqual(raw) else {
            throw .malformed(path: path, reason: "\(what) is not valid UTF-8")
        }
        return s
    }

    mutating func value(_ type: GGUFValueType, what: String, depth: Int) throws(GGUFError) -> GGUFValue {
        switch type {
        case .u8: return .u8(try take(UInt8.self, what))
        case .i8: return .i8(try take(Int8.self, what))
        case .u16: return .u16(try take(UInt16.self, what))
        case .i16: return .i16(try take(Int16.self, what))
        case .u32: return .u32(try take(UInt32.self, what))
        case .i32: return .i32(try take(Int32.self, what))
        case .f32: return .f32(Float(bitPattern: try take(UInt32.self, what)))
        case .bool:
            let b = try take(UInt8.self, what)
            guard b <= 1 else { throw .malformed(path: path, reason: "metadata \(what) is a bool with value \(b) (0 or 1 expected)") }
            return .bool(b == 1)
        case .string: return .string(try string(what))
        case .u64: return .u64(try take(UInt64.self, what))
        case .i64: return .i64(try take(Int64.self, what))
        case .f64: return .f64(Double(bitPattern: try take(UInt64.self, what)))
        case .array:
            guard depth < GGUFFile.maxArrayDepth else {
                throw .malformed(path: path, reason: "metadata \(what) nests arrays more than \(GGUFFile.maxArrayDepth) deep")
            }
            let rawType = try u32("the element type of \(what)")
            guard let element = GGUFValueType(rawValue: rawType) else {
                throw .malformed(path: path, reason: "metadata \(what) is an array of unknown value type \(rawType)")
            }
            let n = try count("the length of array \(what)", minimumSize: element.minimumSize)
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try value(element, what: what, depth: depth + 1)) }
            return .array(of: element, items)
        }
    }
}
