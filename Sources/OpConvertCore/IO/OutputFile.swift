import COpConvertKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Somewhere bytes are streamed to and that appears under its final name on commit.
public protocol ByteSink: AnyObject {
    /// Writes (or copies away) the bytes before returning.
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Writes bytes that stay valid until commit (a memory-mapped input), possibly later and
    /// without a copy; `after` runs for each piece once it is written.
    func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws
    /// Lets the caller produce bytes straight into the sink's own buffer (no copy): `fill`
    /// gets room for a whole number of `granule`-byte units, at least one and at most
    /// `maxCount` bytes, and must fill all of it. Returns the bytes taken.
    func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int
    func commit(sync: Bool) throws
}

extension ByteSink {
    public func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws {
        try write(bytes)
        after?(bytes)
    }

    public func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int {
        try ByteSinks.writeThroughBuffer(granule: granule, maxCount: maxCount, fill) { try write($0) }
    }
}

enum ByteSinks {
    /// `writeInPlace` for sinks without a buffer of their own: fills a temporary one of
    /// whole units (about 4 MiB, at least one unit) and writes it.
    static func writeThroughBuffer(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void,
                                   write: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        let unit = max(granule, 1)
        let count = max(unit, min(maxCount, max(4 << 20, unit)) / unit * unit)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        defer { buffer.deallocate() }
        try fill(buffer)
        try write(UnsafeRawBufferPointer(buffer))
        return count
    }
}

/// A file written under a temporary name in its target directory and renamed into place
/// only by `commit()`. If it is dropped uncommitted, the temporary file is removed, so a
/// failed run never leaves a half-written output under the real name.
public final class OutputFile: ByteSink {
    public let finalPath: String
    public let temporaryPath: String
    private var fd: Int32
    private var committed = false
    public private(set) var bytesWritten: Int = 0
    /// Bytes written since writeback was last started (see `startWriteback`).
    private var unflushed = 0

    /// Set for an output the user named (not a file inside an output directory): checked
    /// against the inputs and the --overwrite rule, installed atomically.
    private let topLevel: (kind: OutputKind, policy: OutputPolicy)?
    private var createdParents: [String] = []

    /// A file inside an output directory being built (or a scratch file): renamed into place
    /// on commit, no checks.
    public init(path: String) throws(IOError) {
        finalPath = path
        topLevel = nil
        temporaryPath = TemporaryName.temporary(for: path)
        fd = try POSIX.open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o644, operation: "create")
    }

    /// An output file the user named: checked by `OutputGuard` (never an input, replaces
    /// only a file of the same kind, with --overwrite), parents created, stale temporaries
    /// of dead runs removed.
    public init(path: String, kind: OutputKind, policy: OutputPolicy) throws {
        finalPath = path
        topLevel = (kind, policy)
        try OutputGuard.check(path, kind: kind, policy: policy)
        createdParents = try FileSystem.makeParents(of: path)
        StaleTemporaries.clean(beside: path)
        temporaryPath = TemporaryName.temporary(for: path)
        do { fd = try POSIX.open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o644, operation: "create") } catch {
            for d in createdParents.reversed() { POSIX.rmdir(d) }
            throw error
        }
        TemporaryPaths.register(temporaryPath, final: path)
    }

    public func write(_ buffer: UnsafeRawBufferPointer) throws {
        try Interrupts.check()
        // Pieces of 8 MiB: Linux caps one write near 2 GiB, and writing from a mapped
        // input in huge pieces was slower and noisier than in moderate ones.
        try POSIX.writeAll(fd, buffer, path: finalPath, piece: 8 << 20)
        bytesWritten += buffer.count
        unflushed += buffer.count
        if unflushed >= 64 << 20 { startWriteback() }
    }

    /// Asks the kernel to start writing what is in the page cache now, without waiting: the
    /// disk works while we compute, and the final fsync has little left to do.
    private func startWriteback() {
        // Only a hint: a failure here leaves the work to fsync.
        _ = opc_start_writeback(fd, Int64(bytesWritten - unflushed), Int64(unflushed))
        unflushed = 0
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Turns on direct I/O: writes go from our buffers to the disk without a copy into the
    /// page cache (for large outputs that copy is most of the kernel's work). Direct writes
    /// need 4096-aligned buffers, offsets and lengths. False where the file system refuses.
    func enableDirectIO() -> Bool {
        opc_set_direct_io(fd, 1) == 0
    }

    /// Back to buffered writes (for a tail shorter than the direct I/O alignment).
    func disableDirectIO() {
        _ = opc_set_direct_io(fd, 0)
    }

    /// Writes at `offset` without using or moving the file position, so several threads
    /// may write disjoint ranges at once. A direct write the file system rejects (EINVAL:
    /// alignment it does not accept) turns direct I/O off and goes through the page cache.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: Int) throws {
        try Interrupts.check()
        guard var p = buffer.baseAddress else { return }
        var left = buffer.count
        var position = offset
        var fellBack = false
        while left > 0 {
            let n = pwrite(fd, p, min(left, 8 << 20), off_t(position))
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EINVAL && !fellBack, opc_set_direct_io(fd, 0) == 0 { fellBack = true; continue }
                throw IOError(path: finalPath, operation: "write", code: code)
            }
            p += n
            left -= n
            position += n
        }
    }

    /// Flushes to disk, closes and renames the file into place.
    public func commit(sync: Bool = true) throws {
        if sync { try POSIX.fsync(fd, path: finalPath) }
        guard POSIX.close(fd) else { fd = -1; throw IOError(path: finalPath, operation: "close") }
        fd = -1
        if let (kind, policy) = topLevel {
            try OutputInstaller.install(temporary: temporaryPath, final: finalPath, kind: kind, policy: policy)
            TemporaryPaths.unregister(temporaryPath)
        } else {
            do throws(IOError) { try POSIX.rename(temporaryPath, finalPath) } catch {
                throw IOError(path: finalPath, operation: "rename", code: error.code)
            }
        }
        committed = true
        if sync { FileSystem.syncDirectory(FileSystem.split(finalPath).0) }
    }

    deinit {
        if fd >= 0 { POSIX.close(fd) }
        if !committed {
            POSIX.unlink(temporaryPath)
            if topLevel != nil {
                TemporaryPaths.discard(temporaryPath)
                for d in createdParents.reversed() { POSIX.rmdir(d) }
            }
        }
    }
}

/// fsyncs an existing file by path.
package func fsyncFile(_ path: String) throws(IOError) {
    let fd = try POSIX.open(path, O_RDONLY | O_CLOEXEC)
    defer { POSIX.close(fd) }
    try POSIX.fsync(fd, path: path)
}
