import OpConvertCore

/// A memory-mapped, validated safetensors file. Tensor data is handed out as zero-copy
/// views into the mapping; the views are valid while this object is alive.
public final class SafetensorsFile: Sendable {
    public let path: String
    public let header: SafetensorsHeader
    public let mapping: MappedFile

    public init(path: String) throws(SafetensorsError) {
        self.path = path
        do {
            mapping = try MappedFile(path: path)
        } catch {
            throw .io(error)
        }
        header = try SafetensorsHeader.parse(prefix: mapping.bytes, fileSize: mapping.count, file: path)
    }

    /// Reads from memory that already holds a whole file (a decompressed .zst).
    public init(mapping: MappedFile) throws(SafetensorsError) {
        path = mapping.path
        self.mapping = mapping
        header = try SafetensorsHeader.parse(prefix: mapping.bytes, fileSize: mapping.count, file: mapping.path)
    }

    /// Opens a .safetensors file, or decompresses a .safetensors.zst one.
    public static func open(_ path: String) throws -> SafetensorsFile {
        path.hasSuffix(".zst") ? try SafetensorsFile(mapping: try ZstdReader.decompress(path: path)) : try SafetensorsFile(path: path)
    }

    public var tensors: [TensorInfo] { header.tensors }
    public var metadata: [String: String]? { header.metadata }

    public func tensor(named name: String) throws(SafetensorsError) -> TensorInfo {
        guard let t = header.tensor(named: name) else { throw .tensorNotFound(file: path, tensor: name) }
        return t
    }

    /// The raw little-endian bytes of a tensor (not necessarily aligned: read them with
    /// unaligned loads or the conversion kernels).
    public func data(_ tensor: TensorInfo) -> UnsafeRawBufferPointer {
        let start = header.dataStart + tensor.dataOffsets.lowerBound
        return UnsafeRawBufferPointer(rebasing: mapping.bytes[start..<(start + tensor.byteCount)])
    }

    /// Total bytes of tensor data.
    public var dataSize: Int { mapping.count - header.dataStart }
}

extension SafetensorsFile {
    /// Returns a consumed tensor's pages to the kernel (see `MappedFile.release`).
    public func release(_ tensor: TensorInfo) {
        mapping.release(offset: header.dataStart + tensor.dataOffsets.lowerBound, count: tensor.byteCount)
    }
}
