#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one place opconvert calls the POSIX file APIs. Calls that can be interrupted by a
/// signal (open, read, write, fsync, ...) are retried on EINTR; close is not (on Linux the
/// descriptor is gone even when close reports EINTR). Failures throw `IOError`, which names
/// the path, the operation and errno (its name and its text).
package enum POSIX {
    /// Retries `call` while it fails with EINTR; returns its last result.
    @inline(__always)
    private static func retrying<R: BinaryInteger>(_ call: () -> R) -> R {
        while true {
            let r = call()
            if r != -1 || errno != EINTR { return r }
        }
    }

    // MARK: descriptors

    package static func open(_ path: String, _ flags: Int32, mode: mode_t = 0, operation: String = "open") throws(IOError) -> Int32 {
        let fd = retrying { Glibc_open(path, flags, mode) }
        guard fd >= 0 else { throw IOError(path: path, operation: operation) }
        return fd
    }

    /// Opens, or returns nil with errno set (for callers that only probe).
    package static func openIfPossible(_ path: String, _ flags: Int32) -> Int32? {
        let fd = retrying { Glibc_open(path, flags, 0) }
        return fd >= 0 ? fd : nil
    }

    /// Closes a descriptor; true when close succeeded. Never retried (see above).
    @discardableResult
    package static func close(_ fd: Int32) -> Bool {
        #if canImport(Glibc)
        return Glibc.close(fd) == 0
        #else
        return Darwin.close(fd) == 0
        #endif
    }

    /// One read(2) of at most `count` bytes, retried on EINTR; -1 on error (errno set).
    package static func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer?, count: Int) -> Int {
        retrying {
            #if canImport(Glibc)
            Glibc.read(fd, buffer, count)
            #else
            Darwin.read(fd, buffer, count)
            #endif
        }
    }

    /// Writes all of `buffer`, in pieces of at most `piece` bytes (Linux caps one write near
    /// 2 GiB), retrying on EINTR and after short writes.
    package static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, path: String, piece: Int = 8 << 20) throws(IOError) {
        guard var p = buffer.baseAddress else { return }
        var left = buffer.count
        while left > 0 {
            let n = retrying {
                #if canImport(Glibc)
                Glibc.write(fd, p, min(left, piece))
                #else
                Darwin.write(fd, p, min(left, piece))
                #endif
            }
            if n < 0 { throw IOError(path: path, operation: "write") }
            if n == 0 { throw IOError(path: path, operation: "write", code: EIO) }
            p += n
            left -= n
        }
    }

    package static func fsync(_ fd: Int32, path: String) throws(IOError) {
        #if canImport(Glibc)
        guard retrying({ Glibc.fsync(fd) }) == 0 else { throw IOError(path: path, operation: "fsync") }
        #else
        guard retrying({ Darwin.fsync(fd) }) == 0 else { throw IOError(path: path, operation: "fsync") }
        #endif
    }

    package static func fstat(_ fd: Int32, path: String) throws(IOError) -> FileStatus {
        var st = FileStatus()
        #if canImport(Glibc)
        guard retrying({ Glibc.fstat(fd, &st) }) == 0 else { throw IOError(path: path, operation: "stat") }
        #else
        guard retrying({ Darwin.fstat(fd, &st) }) == 0 else { throw IOError(path: path, operation: "stat") }
        #endif
        return st
    }

    // MARK: paths

    /// stat(2) (follows symbolic links), or nil when it fails.
    package static func stat(_ path: String) -> FileStatus? {
        var st = FileStatus()
        return retrying({ system_stat(path, &st) }) == 0 ? st : nil
    }

    /// lstat(2) (the link itself), or nil when it fails.
    package static func lstat(_ path: String) -> FileStatus? {
        var st = FileStatus()
        return retrying({ system_lstat(path, &st) }) == 0 ? st : nil
    }

    package static func mkdir(_ path: String, mode: mode_t = 0o755) throws(IOError) {
        #if canImport(Glibc)
        guard retrying({ Glibc.mkdir(path, mode) }) == 0 else { throw IOError(path: path, operation: "mkdir") }
        #else
        guard retrying({ Darwin.mkdir(path, mode) }) == 0 else { throw IOError(path: path, operation: "mkdir") }
        #endif
    }

    /// rmdir(2); true on success (clean-up paths ignore failures).
    @discardableResult
    package static func rmdir(_ path: String) -> Bool {
        #if canImport(Glibc)
        return retrying { Glibc.rmdir(path) } == 0
        #else
        return retrying { Darwin.rmdir(path) } == 0
        #endif
    }

    /// unlink(2); true on success (clean-up paths ignore failures).
    @discardableResult
    package static func unlink(_ path: String) -> Bool {
        #if canImport(Glibc)
        return retrying { Glibc.unlink(path) } == 0
        #else
        return retrying { Darwin.unlink(path) } == 0
        #endif
    }

    /// rename(2); the error names the destination.
    package static func rename(_ from: String, _ to: String) throws(IOError) {
        #if canImport(Glibc)
        guard retrying({ Glibc.rename(from, to) }) == 0 else { throw IOError(path: to, operation: "rename") }
        #else
        guard retrying({ Darwin.rename(from, to) }) == 0 else { throw IOError(path: to, operation: "rename") }
        #endif
    }

    /// Entries of a directory in readdir order, without "." and "..".
    package static func directoryEntries(_ path: String) throws(IOError) -> [String] {
        guard let d = opendir(path) else { throw IOError(path: path, operation: "opendir") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    // MARK: memory maps

    package static func mmap(_ count: Int, protection: Int32, flags: Int32, fd: Int32, path: String, operation: String = "mmap") throws(IOError) -> UnsafeMutableRawPointer {
        #if canImport(Glibc)
        let p = Glibc.mmap(nil, count, protection, flags, fd, 0)
        #else
        let p = Darwin.mmap(nil, count, protection, flags, fd, 0)
        #endif
        guard let p, p != MAP_FAILED else { throw IOError(path: path, operation: operation) }
        return p
    }

    package static func munmap(_ base: UnsafeMutableRawPointer, _ count: Int) {
        #if canImport(Glibc)
        _ = Glibc.munmap(base, count)
        #else
        _ = Darwin.munmap(base, count)
        #endif
    }

    /// A paging hint; failures are ignored (it is only advice).
    package static func madvise(_ base: UnsafeMutableRawPointer, _ count: Int, _ advice: Int32) {
        #if canImport(Glibc)
        _ = Glibc.madvise(base, count, advice)
        #else
        _ = Darwin.madvise(base, count, advice)
        #endif
    }

    // MARK: errno

    /// errno's symbolic name ("ENOSPC"), or "errno N" for one not listed.
    package static func errnoName(_ code: Int32) -> String {
        switch code {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case EINTR: return "EINTR"
        case EIO: return "EIO"
        case EBADF: return "EBADF"
        case ENOMEM: return "ENOMEM"
        case EACCES: return "EACCES"
        case EFAULT: return "EFAULT"
        case EBUSY: return "EBUSY"
        case EEXIST: return "EEXIST"
        case EXDEV: return "EXDEV"
        case ENOTDIR: return "ENOTDIR"
        case EISDIR: return "EISDIR"
        case EINVAL: return "EINVAL"
        case ENFILE: return "ENFILE"
        case EMFILE: return "EMFILE"
        case ETXTBSY: return "ETXTBSY"
        case EFBIG: return "EFBIG"
        case ENOSPC: return "ENOSPC"
        case ESPIPE: return "ESPIPE"
        case EROFS: return "EROFS"
        case EMLINK: return "EMLINK"
        case ENAMETOOLONG: return "ENAMETOOLONG"
        case ENOSYS: return "ENOSYS"
        case ENOTEMPTY: return "ENOTEMPTY"
        case ELOOP: return "ELOOP"
        case EDQUOT: return "EDQUOT"
        case ENODEV: return "ENODEV"
        case EAGAIN: return "EAGAIN"
        case EOVERFLOW: return "EOVERFLOW"
        case ENXIO: return "ENXIO"
        case ESTALE: return "ESTALE"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        default: return "errno \(code)"
        }
    }
}

// Module-qualified names for the calls whose Swift names POSIX's own methods shadow.
#if canImport(Glibc)
private func Glibc_open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { Glibc.open(path, flags, mode) }
/// struct stat, under a name POSIX.stat does not shadow.
package typealias FileStatus = Glibc.stat
#else
private func Glibc_open(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { Darwin.open(path, flags, mode) }
package typealias FileStatus = Darwin.stat
#endif

// At file scope `stat(path, &st)` is the function, not the struct's initializer.
private func system_stat(_ path: String, _ st: inout FileStatus) -> Int32 { stat(path, &st) }
private func system_lstat(_ path: String, _ st: inout FileStatus) -> Int32 { lstat(path, &st) }

extension POSIX {
    /// Bytes an unprivileged writer may still use on the filesystem holding `path`
    /// (statvfs's f_bavail blocks), or nil when it cannot be asked.
    package static func availableBytes(_ path: String) -> Int? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        let (bytes, overflow) = Int(s.f_bavail).multipliedReportingOverflow(by: Int(s.f_frsize))
        return overflow ? Int.max : bytes
    }
}
