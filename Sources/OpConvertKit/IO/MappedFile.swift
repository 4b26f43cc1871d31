#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. The mapping lives as long as this object;
/// views handed out by readers must not outlive it (they keep a reference to it).
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let mappedCount: Int
    /// False for anonymous memory (decompressed data), whose pages must never be dropped.
    private let fileBacked: Bool

    public var count: Int { bytes.count }

    public init(path: String) throws(IOError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(path: path, operation: "open") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw IOError(path: path, operation: "stat") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw IOError(path: path, operation: "open (not a regular file)", code: EINVAL)
        }
        let size = Int(st.st_size)
        mappedCount = size
        fileBacked = true
        if size == 0 {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw IOError(path: path, operation: "mmap") }
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    /// Tells the kernel the range will be read front to back soon (read-ahead, fewer faults).
    public func adviseSequential(offset: Int = 0, count: Int? = nil) {
        guard let base else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        let end = min(self.count, offset + (count ?? (self.count - offset)))
        guard end > start else { return }
        _ = madvise(base + start, end - start, MADV_SEQUENTIAL)
        _ = madvise(base + start, end - start, MADV_WILLNEED)
    }

    /// Takes ownership of an anonymous mapping (decompressed data) of which the first
    /// `usedCount` bytes are the content.
    init(adopting base: UnsafeMutableRawPointer, mappedCount: Int, usedCount: Int, path: String) {
        self.path = path
        self.base = base
        self.mappedCount = mappedCount
        fileBacked = false
        bytes = UnsafeRawBufferPointer(start: base, count: usedCount)
    }

    deinit {
        if let base { munmap(base, mappedCount) }
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
        _ = madvise(UnsafeMutableRawPointer(mutating: start) + lo, hi - lo, MADV_DONTNEED)
    }
}
