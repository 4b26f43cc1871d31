import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// zstd failures, with the file they concern.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var message: String
    public var description: String { "\(path): zstd: \(message)" }

    init(_ path: String, _ code: Int) {
        self.path = path
        message = String(cString: ZSTD_getErrorName(code))
    }
    init(_ path: String, message: String) {
        self.path = path
        self.message = message
    }
}

/// Streaming zstd decompression of a whole file into anonymous memory, so a compressed
/// safetensors file can then be read exactly like a mapped one.
public enum ZstdReader {
    public static func decompress(path: String) throws -> MappedFile {
        let input = try MappedFile(path: path)
        guard let dctx = ZSTD_createDCtx() else { throw ZstdError(path, message: "out of memory") }
        defer { ZSTD_freeDCtx(dctx) }
        let declared = input.count > 0 ? ZSTD_getFrameContentSize(input.bytes.baseAddress, input.count) : 0
        // The frame header's size is only a hint: it can claim anything up to 2^64-1, so one
        // that does not fit in an Int or cannot be mapped falls back to growing as data comes.
        let hint = (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != ZSTD_CONTENTSIZE_ERROR && declared > 0)
            ? Int(exactly: declared) : nil
        var capacity = max(input.count * 4, 1 << 20)
        var out: AnonymousMemory
        if let hint, let claimed = try? AnonymousMemory(count: hint, path: path) {
            capacity = hint
            out = claimed
        } else {
            out = try AnonymousMemory(count: capacity, path: path)
        }
        var produced = 0
        var inBuf = ZSTD_inBuffer(src: input.bytes.baseAddress, size: input.count, pos: 0)
        while true {
            if produced == capacity {
                capacity *= 2
                out = try out.grown(to: capacity, keeping: produced)
            }
            var outBuf = ZSTD_outBuffer(dst: out.base + produced, size: capacity - produced, pos: 0)
            let r = ZSTD_decompressStream(dctx, &outBuf, &inBuf)
            if ZSTD_isError(r) != 0 { throw ZstdError(path, r) }
            produced += outBuf.pos
            if r == 0 && inBuf.pos == inBuf.size { break }
            if inBuf.pos == inBuf.size && outBuf.pos < outBuf.size {
                throw ZstdError(path, message: "truncated input (frame not complete)")
            }
        }
        return out.finish(count: produced, path: path)
    }
}

/// Anonymous memory that becomes a read-only MappedFile once filled.
struct AnonymousMemory {
    var base: UnsafeMutableRawPointer
    var count: Int

    init(count: Int, path: String) throws {
        guard let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw IOError(path: path, operation: "mmap \(count) bytes for decompression")
        }
        base = p
        self.count = count
    }

    func grown(to newCount: Int, keeping used: Int) throws -> AnonymousMemory {
        let bigger = try AnonymousMemory(count: newCount, path: "(decompression buffer)")
        bigger.base.copyMemory(from: base, byteCount: used)
        munmap(base, count)
        return bigger
    }

    func finish(count used: Int, path: String) -> MappedFile {
        MappedFile(adopting: base, mappedCount: count, usedCount: used, path: path)
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
        guard let c = ZSTD_createCCtx() else { throw ZstdError(path, message: "out of memory") }
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
        if ZSTD_isError(r) != 0 { throw ZstdError(file.finalPath, r) }
        try file.write(UnsafeRawBufferPointer(start: buffer, count: output.pos))
        return r
    }

    public func commit(sync: Bool) throws {
        var empty = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        while try pump(&empty, mode: ZSTD_e_end) != 0 {}
        try file.commit(sync: sync)
    }
}
