import OpConvertCore
import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// zstd failures, with the file they concern. Reading: a .zst that zstd refuses, or whose
/// content is not exactly the safetensors file its header describes, is malformed input.
public struct ZstdError: CategorizedError, Sendable {
    public var path: String
    public var message: String
    public var category: ErrorCategory
    public var description: String { "\(path): zstd: \(message)" }

    init(_ path: String, _ code: Int, category: ErrorCategory = .malformedInput) {
        self.path = path
        message = String(cString: ZSTD_getErrorName(code))
        self.category = category
    }
    init(_ path: String, message: String, category: ErrorCategory = .malformedInput) {
        self.path = path
        self.message = message
        self.category = category
    }
}

/// Decompression of a .safetensors.zst file into anonymous memory, so that it can then be
/// read exactly like a mapped one.
///
/// The frame's declared content size is never trusted. The stream is decompressed just far
/// enough to read the safetensors header (capped at the format's 100 MB header limit); the
/// header's offsets then give the exact size of the whole file, and the rest is decompressed
/// into a buffer of exactly that size. A stream that yields more or fewer bytes is refused,
/// so memory never exceeds what a valid file of that header needs.
public enum ZstdReader {
    /// The most a zstd stream can expand: a block holds at most 128 KiB of content and takes
    /// at least 4 bytes (an RLE block: 3-byte header + 1 byte). A header that claims more
    /// than this from the file's size cannot be honest.
    static let maxExpansion = 131_072 / 4

    public static func decompress(path: String) throws -> MappedFile {
        let input = try MappedFile(path: path)
        do {
            let out = try decompress(input)
            try input.checkIntact()
            return out
        } catch let error as ZstdError {
            // Zeros read from a file truncated under us look like corruption: say what happened.
            try input.checkIntact()
            throw error
        } catch let error as SafetensorsError {
            try input.checkIntact()
            throw error
        }
    }

    private static func decompress(_ input: MappedFile) throws -> MappedFile {
        let path = input.path
        guard input.count > 0 else { throw ZstdError(path, message: "empty file (no zstd frame)") }
        let stream = try ZstdDecompressionStream(input)

        // 1. The 8-byte header length, then the header itself.
        var prefix = [UInt8](repeating: 0, count: 8)
        var got = try prefix.withUnsafeMutableBytes { try stream.read(into: $0) }
        guard got == 8 else { throw contentTooShort(prefix, got, path) }
        let headerLength = prefix.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        guard headerLength <= SafetensorsHeader.maxHeaderLength else {
            throw SafetensorsError.headerTooLarge(file: path, length: headerLength)
        }
        prefix += [UInt8](repeating: 0, count: Int(headerLength))
        got = try prefix.withUnsafeMutableBytes { try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[8...])) }
        guard got == Int(headerLength) else { throw contentTooShort(prefix, 8 + got, path) }

        // 2. The exact size of the file that header describes.
        let dataSize = try prefix.withUnsafeBytes { try dataSizeDescribed(byHeader: $0, path: path) }
        let (total, overflow) = prefix.count.addingReportingOverflow(dataSize)
        guard !overflow, total / maxExpansion <= input.count else {
            throw ZstdError(path, message: "the safetensors header describes \(overflow ? "more than \(Int.max)" : String(total)) bytes, more than \(input.count) bytes of zstd data can hold")
        }

        // 3. Exactly that many bytes, and then the end of the stream.
        let out = try AnonymousMemory(count: total, path: path)
        let content = UnsafeMutableRawBufferPointer(start: out.base, count: total)
        prefix.withUnsafeBytes { content.copyMemory(from: $0) }
        got = try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: content[prefix.count...]))
        guard got == dataSize else {
            throw ZstdError(path, message: "content ends after \(prefix.count + got) bytes, but its safetensors header describes \(total)")
        }
        var probe: UInt8 = 0
        guard try withUnsafeMutableBytes(of: &probe, { try stream.read(into: $0) }) == 0 else {
            throw ZstdError(path, message: "content is larger than the \(total) bytes its safetensors header describes")
        }
        return out.finish(path: path)
    }

    /// The tensor data size a header's offsets describe. The header parser checks that the
    /// offsets tile the data exactly; given an impossible data size it reports the size
    /// they do tile, which is the one we need (every other error is the header's own).
    private static func dataSizeDescribed(byHeader prefix: UnsafeRawBufferPointer, path: String) throws -> Int {
        let impossible = Int.max
        do {
            let header = try SafetensorsHeader.parse(prefix: prefix, fileSize: impossible, file: path)
            return impossible - header.dataStart   // only if the offsets really reach Int.max
        } catch let SafetensorsError.bufferSizeMismatch(_, expected, actual) where actual == impossible - prefix.count {
            return expected
        }
    }

    /// The header parser's own error for content that ends inside the header.
    private static func contentTooShort(_ prefix: [UInt8], _ got: Int, _ path: String) -> Error {
        do {
            _ = try prefix.withUnsafeBytes {
                try SafetensorsHeader.parse(prefix: UnsafeRawBufferPointer(rebasing: $0[..<got]), fileSize: got, file: path)
            }
        } catch {
            return error
        }
        return ZstdError(path, message: "content ends after \(got) bytes, inside the safetensors header")
    }
}

/// A zstd decompression stream over a mapped file; the context is freed with it.
final class ZstdDecompressionStream {
    private let dctx: OpaquePointer
    private let input: MappedFile
    private var inBuffer: ZSTD_inBuffer
    /// True when the last frame read was complete (decompressStream returned 0).
    private var frameComplete = false

    init(_ input: MappedFile) throws {
        guard let d = ZSTD_createDCtx() else { throw ZstdError(input.path, message: "out of memory", category: .internal) }
        dctx = d
        self.input = input
        inBuffer = ZSTD_inBuffer(src: input.bytes.baseAddress, size: input.count, pos: 0)
    }

    deinit { ZSTD_freeDCtx(dctx) }

    /// Fills `buffer` with the next decompressed bytes; returns fewer than it holds only at
    /// the end of the stream. Concatenated frames read as one stream, as the zstd tool does;
    /// anything after a frame that is not another frame is an error.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var produced = 0
        while produced < buffer.count {
            if frameComplete && inBuffer.pos == inBuffer.size { break }
            var out = ZSTD_outBuffer(dst: base + produced, size: buffer.count - produced, pos: 0)
            let r = ZSTD_decompressStream(dctx, &out, &inBuffer)
            if ZSTD_isError(r) != 0 { throw ZstdError(input.path, r) }
            produced += out.pos
            frameComplete = r == 0
            if !frameComplete && inBuffer.pos == inBuffer.size && out.pos < out.size {
                throw ZstdError(input.path, message: "truncated (the last frame is not complete)")
            }
        }
        return produced
    }
}

/// Anonymous memory that becomes a read-only MappedFile once filled; unmapped if dropped first.
final class AnonymousMemory {
    let base: UnsafeMutableRawPointer
    let count: Int
    private var adopted = false

    init(count: Int, path: String) throws {
        base = try POSIX.mmap(max(count, 1), protection: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: -1,
                              path: path, operation: "mmap \(count) bytes for decompression")
        self.count = count
    }

    deinit {
        if !adopted { POSIX.munmap(base, max(count, 1)) }
    }

    func finish(path: String) -> MappedFile {
        adopted = true
        return MappedFile(adopting: base, mappedCount: max(count, 1), usedCount: count, path: path)
    }
}

/// A zstd-compressed output file: bytes are compressed as they are written and the file is
/// renamed into place on commit, like `OutputFile`.
public final class ZstdOutputFile: ByteSink {
    private let file: OutputFile
    private let cctx: OpaquePointer
    private var buffer: UnsafeMutableRawPointer
    private let bufferSize = ZSTD_CStreamOutSize()

    public init(path: String, level: Int32 = 3) throws {
        file = try OutputFile(path: path)
        guard let c = ZSTD_createCCtx() else { throw ZstdError(path, message: "out of memory", category: .internal) }
        cctx = c
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        buffer = .allocate(byteCount: bufferSize, alignment: 64)
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        buffer.deallocate()
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var input = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
        while input.pos < input.size {
            try pump(&input, mode: ZSTD_e_continue)
        }
    }

    private func pump(_ input: inout ZSTD_inBuffer, mode: ZSTD_EndDirective) throws -> Int {
        var output = ZSTD_outBuffer(dst: buffer, size: bufferSize, pos: 0)
        let r = ZSTD_compressStream2(cctx, &output, &input, mode)
        if ZSTD_isError(r) != 0 { throw ZstdError(file.finalPath, r, category: .internal) }
        try file.write(UnsafeRawBufferPointer(start: buffer, count: output.pos))
        return r
    }

    public func commit(sync: Bool) throws {
        var empty = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while try pump(&empty, mode: ZSTD_e_end) != 0 {}
        try file.commit(sync: sync)
    }
}
