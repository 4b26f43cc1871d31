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

    /// Removes a file or a directory tree; errors are ignored (used for clean-up).
    public static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Copies a file's bytes to `destination` (through OutputFile: one write loop, synced).
    public static func copyFile(from source: String, to destination: String) throws(IOError) {
        let input = try MappedFile(path: source)
        let out = try OutputFile(path: destination)
        try out.write(input.bytes)
        try out.commit(sync: true)
    }

    public static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
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

/// A directory built under a temporary name beside its target and renamed into place by
/// `commit()`; removed if dropped uncommitted.
public final class OutputDirectory {
    public let finalPath: String
    public let temporaryPath: String
    private var committed = false

    public init(path: String) throws(IOError) {
        finalPath = path
        let (dir, name) = FileSystem.split(path)
        temporaryPath = FileSystem.join(dir, ".\(name).opconvert-tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileSystem.makeDirectory(temporaryPath)
        TemporaryPaths.register(temporaryPath)
    }

    public func path(_ name: String) -> String { FileSystem.join(temporaryPath, name) }

    /// Renames the finished directory into place. With `replacing`, an existing target is
    /// moved aside first and removed only after the new one is in place.
    public func commit(replacing: Bool) throws(IOError) {
        FileSystem.syncDirectory(temporaryPath)
        var aside: String?
        if replacing && FileSystem.exists(finalPath) {
            let (dir, name) = FileSystem.split(finalPath)
            let trash = FileSystem.join(dir, ".\(name).opconvert-old-\(getpid())")
            try FileSystem.rename(finalPath, trash)
            aside = trash
        }
        do {
            try FileSystem.rename(temporaryPath, finalPath)
        } catch {
            if let aside { try? FileSystem.rename(aside, finalPath) }
            throw error
        }
        committed = true
        TemporaryPaths.unregister(temporaryPath)
        if let aside { FileSystem.removeTree(aside) }
        FileSystem.syncDirectory(FileSystem.split(finalPath).directory)
    }

    deinit {
        if !committed {
            FileSystem.removeTree(temporaryPath)
            TemporaryPaths.unregister(temporaryPath)
        }
    }
}
