import COpConvertKernels
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. The mapping lives as long as this object;
/// views handed out by readers must not outlive it (they keep a reference to it).
///
/// File-backed mappings are guarded: if another process truncates the file while it is
/// mapped, reading past the new end reads zeros instead of killing the process with SIGBUS
/// (see opc_io.c), and `checkIntact()` / `checkAllIntact()` then report the change. Data
/// access itself is never checked (it is hot); callers check before trusting the result.
// @unchecked: the mapping is immutable after init (pointers to read-only memory) and
// unmapped only in deinit.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let mappedCount: Int
    /// False for anonymous memory (decompressed data), whose pages must never be dropped.
    private let fileBacked: Bool
    /// Nil for anonymous memory and empty files (nothing that can change under us).
    private let watch: MappedFileWatch?

    public var count: Int { bytes.count }

    public init(path: String) throws(IOError) {
        self.path = path
        let fd = try POSIX.open(path, O_RDONLY | O_CLOEXEC)
        defer { POSIX.close(fd) }
        let st = try POSIX.fstat(fd, path: path)
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw IOError(path: path, operation: "open (not a regular file)", code: EINVAL)
        }
        let size = Int(st.st_size)
        mappedCount = size
        fileBacked = true
        if size == 0 {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            watch = nil
            return
        }
        let p = try POSIX.mmap(size, protection: PROT_READ, flags: MAP_PRIVATE, fd: fd, path: path)
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
        watch = MappedFileWatch.start(path: path, mapping: UnsafeRawBufferPointer(start: p, count: size), stat: st)
    }

    /// Tells the kernel the range will be read front to back soon (read-ahead, fewer faults).
    public func adviseSequential(offset: Int = 0, count: Int? = nil) {
        guard let base else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        let end = min(self.count, offset + (count ?? (self.count - offset)))
        guard end > start else { return }
        POSIX.madvise(base + start, end - start, MADV_SEQUENTIAL)
        POSIX.madvise(base + start, end - start, MADV_WILLNEED)
    }

    /// Takes ownership of an anonymous mapping (decompressed data) of which the first
    /// `usedCount` bytes are the content.
    package init(adopting base: UnsafeMutableRawPointer, mappedCount: Int, usedCount: Int, path: String) {
        self.path = path
        self.base = base
        self.mappedCount = mappedCount
        fileBacked = false
        watch = nil
        bytes = UnsafeRawBufferPointer(start: base, count: usedCount)
    }

    deinit {
        // Unguard before unmapping, so a later mapping at this address is not mistaken for ours.
        watch?.stop()
        if let base { POSIX.munmap(base, mappedCount) }
    }

    /// Throws if the file changed while mapped: part of it was read as zeros because it had
    /// been truncated, or it is now shorter or was modified (so the bytes read may be a mix
    /// of old and new). A file replaced by rename or deleted is fine: the mapping still
    /// holds the old, complete contents.
    public func checkIntact() throws(FileChangedError) {
        try watch?.check()
    }

    /// `checkIntact()` for every live file-backed mapping in the process. Call it before
    /// committing an output, so that a damaged read never becomes a renamed output.
    public static func checkAllIntact() throws(FileChangedError) {
        for watch in MappedFileWatch.live.snapshot() { try watch.check() }
    }
}

extension MappedFile {
    /// Drops the pages of a range from this process's mapping once it has been consumed, so
    /// streaming through a multi-GB file keeps the resident set small (the data stays in
    /// the page cache; touching it again simply maps it back).
    public func release(offset: Int, count: Int) {
        guard fileBacked, let start = bytes.baseAddress, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lo = offset / page * page
        let hi = min(self.count, (offset + count + page - 1) / page * page)
        guard hi > lo else { return }
        POSIX.madvise(UnsafeMutableRawPointer(mutating: start) + lo, hi - lo, MADV_DONTNEED)
    }
}

/// An input file changed while opconvert was reading it (exit 74: the read is not trustworthy).
public struct FileChangedError: CategorizedError, Sendable, Equatable {
    public var path: String
    /// What changed, e.g. "truncated to 5000 bytes".
    public var change: String
    public var category: ErrorCategory { .io }
    public var description: String { "\(path): the file changed while it was being read (\(change))" }
}

/// What is known about a mapped file when it was mapped, to tell later whether it changed.
final class MappedFileWatch: Sendable {
    let path: String
    /// Fault-guard slot in opc_io.c, or -1 when the table was full (then only the
    /// size and modification time are checked, and a truncation still ends in SIGBUS).
    let slot: Int32
    let device: UInt64
    let inode: UInt64
    let size: Int64
    /// Modification time (seconds, nanoseconds).
    let modified: (Int, Int)
    let token: UInt64

    private init(path: String, slot: Int32, stat st: stat, token: UInt64) {
        self.path = path
        self.slot = slot
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        modified = Self.modificationTime(st)
        self.token = token
    }

    static func start(path: String, mapping: UnsafeRawBufferPointer, stat st: stat) -> MappedFileWatch {
        let slot = opc_guard_register(mapping.baseAddress, mapping.count)
        let watch = MappedFileWatch(path: path, slot: slot, stat: st, token: live.nextToken())
        live.insert(watch)
        return watch
    }

    func stop() {
        MappedFileWatch.live.remove(token)
        if slot >= 0 { opc_guard_unregister(slot) }
    }

    func check() throws(FileChangedError) {
        // stat by path: the same inode means it is our file; a different one (or none)
        // means it was replaced or deleted, which leaves our mapping's contents intact.
        let current = POSIX.stat(path)
        let now = current ?? FileStatus()
        let sameFile = current.map { UInt64($0.st_dev) == device && UInt64($0.st_ino) == inode } ?? false
        if slot >= 0 && opc_guard_damaged(slot) != 0 {
            let change = sameFile && Int64(now.st_size) < size
                ? "truncated to \(now.st_size) bytes" : "truncated while mapped; part of it read as zeros"
            throw FileChangedError(path: path, change: change)
        }
        guard sameFile else { return }
        if Int64(now.st_size) < size {
            throw FileChangedError(path: path, change: "truncated to \(now.st_size) bytes")
        }
        let t = Self.modificationTime(now)
        if t != modified {
            throw FileChangedError(path: path, change: "modified; it is now \(now.st_size) bytes")
        }
    }

    private static func modificationTime(_ st: stat) -> (Int, Int) {
        #if canImport(Darwin)
        return (Int(st.st_mtimespec.tv_sec), Int(st.st_mtimespec.tv_nsec))
        #else
        return (Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec))
        #endif
    }

    /// Live watches, for `MappedFile.checkAllIntact()`.
    static let live = LiveWatches()

    // The lock guards every access to `watches` and `counter`: safe to share.
    final class LiveWatches: @unchecked Sendable {
        private let lock = NSLock()
        private var watches: [UInt64: MappedFileWatch] = [:]
        private var counter: UInt64 = 0

        func nextToken() -> UInt64 { lock.withLock { counter += 1; return counter } }
        func insert(_ w: MappedFileWatch) { lock.withLock { watches[w.token] = w } }
        func remove(_ token: UInt64) { lock.withLock { _ = watches.removeValue(forKey: token) } }
        func snapshot() -> [MappedFileWatch] { lock.withLock { watches.values.sorted { $0.token < $1.token } } }
    }
}
