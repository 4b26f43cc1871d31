import COpConvertKernels
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Small path and file helpers; every POSIX call on paths lives here or in the IO types.
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
        var st = stat()
        return lstat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func isSymbolicLink(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
    }

    public static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    public static func fileSize(_ path: String) throws(IOError) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else { throw IOError(path: path, operation: "stat") }
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
        guard let d = opendir(path) else { throw IOError(path: path, operation: "opendir") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public static func readAll(_ path: String) throws(IOError) -> [UInt8] {
        let file = try MappedFile(path: path)
        return Array(file.bytes)
    }

    public static func makeDirectory(_ path: String) throws(IOError) {
        guard mkdir(path, 0o755) == 0 else { throw IOError(path: path, operation: "mkdir") }
    }

    /// Removes a file or a directory tree; errors are ignored (used for clean-up of
    /// opconvert's own temporaries only).
    public static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            for name in (try? list(path)) ?? [] { removeTree(join(path, name)) }
            _ = rmdir(path)
        } else {
            _ = unlink(path)
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
            if mkdir(dir, 0o755) != 0 && errno != EEXIST {
                for d in created.reversed() { _ = rmdir(d) }
                throw IOError(path: dir, operation: "mkdir")
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
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
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
        #if canImport(Glibc)
        let r = Glibc.rename(from, to)
        #else
        let r = Darwin.rename(from, to)
        #endif
        guard r == 0 else { throw IOError(path: to, operation: "rename from \(from)") }
    }
}

