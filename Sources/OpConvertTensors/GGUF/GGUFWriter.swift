import OpConvertCore

/// One tensor of a GGUF file to be written.
public struct GGUFTensorSpec: Sendable, Equatable {
    public var name: String
    /// ne[] in ggml order (the numpy shape reversed).
    public var dims: [Int]
    public var type: GGUFTensorType

    public init(name: String, dims: [Int], type: GGUFTensorType) {
        self.name = name
        self.dims = dims
        self.type = type
    }

    public var elementCount: Int { dims.reduce(1, *) }
    public var byteCount: Int { elementCount / type.blockElements * type.blockBytes }
}

/// Writes GGUF v3 files (little endian), laid out as llama.cpp's and the gguf package's
/// writers do: header, metadata, tensor infos, padding to the alignment, then each tensor's
/// data padded to the alignment. The file appears under its name only when complete.
public enum GGUFWriter {
    public static let version: UInt32 = 3

    /// Writes `tensors` in order; `produce(i)` returns tensor i's bytes when the file reaches it.
    /// `general.alignment` (u32) in `metadata` sets the alignment (default 32).
    public static func write(to path: String, metadata: [(key: String, value: GGUFValue)], tensors: [GGUFTensorSpec],
                             policy: OutputPolicy, produce: (Int) throws -> [UInt8]) throws {
        var alignment = GGUFFile.defaultAlignment
        if case let .u32(a)? = metadata.first(where: { $0.key == "general.alignment" })?.value, a > 0, a & (a - 1) == 0 {
            alignment = Int(a)
        }
        let head = header(metadata: metadata, tensors: tensors, alignment: alignment)
        let file = try OutputFile(path: path, kind: .ggufFile, policy: policy)
        try file.write(head)
        for (i, spec) in tensors.enumerated() {
            let bytes = try produce(i)
            guard bytes.count == spec.byteCount else {
                throw GGUFError.internal(path: path, reason: "tensor \(spec.name) has \(bytes.count) bytes, expected \(spec.byteCount)")
            }
            try file.write(bytes)
            try file.write([UInt8](repeating: 0, count: padding(bytes.count, alignment)))
        }
        try MappedFile.checkAllIntact()
        try file.commit(sync: true)
    }

    package static func padding(_ n: Int, _ alignment: Int) -> Int { (alignment - n % alignment) % alignment }

    /// Everything before the data section, padded to the alignment.
    static func header(metadata: [(key: String, value: GGUFValue)], tensors: [GGUFTensorSpec], alignment: Int) -> [UInt8] {
        var out = Array(GGUFFile.magic)
        append(version, to: &out)
        append(UInt64(tensors.count), to: &out)
        append(UInt64(metadata.count), to: &out)
        for (key, value) in metadata {
            appendString(key, to: &out)
            append(value.type.rawValue, to: &out)
            appendValue(value, to: &out)
        }
        var offset = 0
        for t in tensors {
            appendString(t.name, to: &out)
            append(UInt32(t.dims.count), to: &out)
            for d in t.dims { append(UInt64(d), to: &out) }
            append(t.type.rawValue, to: &out)
            append(UInt64(offset), to: &out)
            offset += t.byteCount + padding(t.byteCount, alignment)
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: padding(out.count, alignment)))
        return out
    }

    package static func append<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }

    package static func appendString(_ s: String, to out: inout [UInt8]) {
        let utf8 = Array(s.utf8)
        append(UInt64(utf8.count), to: &out)
        out.append(contentsOf: utf8)
    }

    static func appendValue(_ value: GGUFValue, to out: inout [UInt8]) {
        switch value {
        case let .u8(v): append(v, to: &out)
        case let .i8(v): append(v, to: &out)
        case let .u16(v): append(v, to: &out)
        case let .i16(v): append(v, to: &out)
        case let .u32(v): append(v, to: &out)
        case let .i32(v): append(v, to: &out)
        case let .f32(v): append(v.bitPattern, to: &out)
        case let .bool(v): append(UInt8(v ? 1 : 0), to: &out)
        case let .string(s): appendString(s, to: &out)
        case let .u64(v): append(v, to: &out)
        case let .i64(v): append(v, to: &out)
        case let .f64(v): append(v.bitPattern, to: &out)
        case let .array(type, items):
            append(type.rawValue, to: &out)
            append(UInt64(items.count), to: &out)
            for item in items { appendValue(item, to: &out) }
        }
    }
}
