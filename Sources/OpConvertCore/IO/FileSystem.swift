import COpConvertKernels
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Small path and file helpers over POSIX.swift (the one file that calls the POSIX file API).
public enum FileSystem {
    public static func split(_ path: String) -> (directory: String, name: String) {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return (".", trimmed) }
        let dir = String(trimmed[..<slash])
        return (dir.isEmpty ? "/" : dir, String(trimmed[trimmed.index(after: slash)...]))
    }

    /// `path` made absolute against the current directory (not resolved).
    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        guard let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return join(String(cString: cwd), path)
    }

    public static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty || a == "." { return b }
        return a.hasSuffix("/") ? a + b : a + "/" + b
    }

    public static func exists(_ path: String) -> Bool {
        POSIX.lstat(path) != nil
    }

    public static func isDirectory(_ path: String) -> Bool {
        guard let st = POSIX.stat(path) else { return false }
        return (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func isSymbolicLink(_ path: String) -> Bool {
        guard let st = POSIX.lstat(path) else { return false }
        return (st.st_mode & S_IFMT) == S_IFLNK
    }

    public static func isRegularFile(_ path: String) -> Bool {
        guard let st = POSIX.stat(path) else { return false }
        return (st.st_mode & S_IFMT) == S_IFREG
    }

    public static func fileSize(_ path: String) throws(IOError) -> Int {
        guard let st = POSIX.stat(path) else { throw IOError(path: path, operation: "stat") }
        return Int(st.st_size)
    }

    /// Canonical absolute path (symlinks resolved), or nil when it does not exist.
    public static func canonical(_ path: String) -> String? {
        guard let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// Entries of a directory, sorted by name, without "." and "..".
    public static func list(_ path: String) throws(IOError) -> [String] {
        try POSIX.directoryEntries(path).sorted()
    }

    public static func readAll(_ path: String) throws(IOError) -> [UInt8] {
        let file = try MappedFile(path: path)
        return Array(file.bytes)
    }

    public static func makeDirectory(_ path: String) throws(IOError) {
        try POSIX.mkdir(path)
    }

    /// Removes a file or a directory tree; errors are ignored (used for clean-up of
    /// opconvert's own temporaries only).
    public static func removeTree(_ path: String) {
        guard let st = POSIX.lstat(path) else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            for name in (try? list(path)) ?? [] { removeTree(join(path, name)) }
            POSIX.rmdir(path)
        } else {
            POSIX.unlink(path)
        }
    }

    /// Creates the missing directories above `path` (as `mkdir -p` of its parent) and returns
    /// the ones it created, outermost first.
    public static func makeParents(of path: String) throws(IOError) -> [String] {
        var missing: [String] = []
        var p = split(absolute(path)).directory
        while !exists(p) && p != "/" {
            missing.append(p)
            p = split(p).directory
        }
        var created: [String] = []
        for dir in missing.reversed() {
            do throws(IOError) { try POSIX.mkdir(dir) } catch {
                // Made meanwhile by someone else (a concurrent batch job): not ours to remove.
                if error.code == EEXIST { continue }
                for d in created.reversed() { POSIX.rmdir(d) }
                throw error
            }
            created.append(dir)
        }
        return created
    }

    /// Copies a file's bytes to `destination` (through OutputFile: one write loop, synced).
    public static func copyFile(from source: String, to destination: String) throws {
        let input = try MappedFile(path: source)
        let out = try OutputFile(path: destination)
        do { try out.write(input.bytes) } catch {
            try input.checkIntact()   // a source truncated under the copy is the real cause
            throw error
        }
        try input.checkIntact()
        try out.commit(sync: true)
    }

    public static func syncDirectory(_ path: String) {
        if let fd = POSIX.openIfPossible(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) {
            try? POSIX.fsync(fd, path: path)
            POSIX.close(fd)
        }
    }

    /// Renames only if `to` does not exist yet (falls back to a check and a plain rename
    /// where the file system cannot say).
    public static func renameNoReplace(_ from: String, _ to: String) throws(IOError) {
        let r = opc_rename_noreplace(from, to)
        if r == 0 { return }
        if r != -EINVAL && r != -ENOSYS { throw IOError(path: to, operation: "rename", code: -r) }
        if exists(to) { throw IOError(path: to, operation: "rename", code: EEXIST) }
        try rename(from, to)
    }

    public static func rename(_ from: String, _ to: String) throws(IOError) {
        do throws(IOError) { try POSIX.rename(from, to) } catch {
            throw IOError(path: to, operation: "rename from \(from)", code: error.code)
        }
    }
}

