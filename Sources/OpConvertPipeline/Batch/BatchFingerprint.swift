import OpConvertCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A job's identity for reruns: SHA-256 over the op, its normalized options and, for every
/// input file (directories: each regular file below, sorted), its path, size, modification
/// time, inode and device. File metadata and not contents because a rerun of thousands of
/// jobs over multi-GB bases must decide in milliseconds what is done; the usual ways of
/// changing a file (writing it, replacing it, copying over it) change its mtime or inode.
/// `--verify-inputs` adds a hash of the contents, for inputs that get re-copied (new
/// mtimes, same bytes) or edited in place with a reset mtime.
enum BatchFingerprint {
    /// Directory levels followed below an input (models and adapters are flat; a little
    /// depth covers nested tokenizer folders).
    static let maxDepth = 3

    static func metadata(op: String, normalized: [(String, JSONValue)], inputs: [String]) -> String {
        var h = header(op: op, normalized: normalized)
        for input in inputs {
            for file in files(input) {
                if let st = POSIX.stat(file) {
                    let (sec, nsec) = modificationTime(st)
                    h.update("file \(file.utf8.count):\(file) size=\(st.st_size) mtime=\(sec).\(nsec) inode=\(st.st_ino) dev=\(st.st_dev)\n")
                } else {
                    h.update("missing \(file.utf8.count):\(file)\n")
                }
            }
        }
        return SHA256.hex(h.finalize())
    }

    /// The same over the inputs' bytes instead of their metadata.
    static func contents(op: String, normalized: [(String, JSONValue)], inputs: [String]) throws -> String {
        var h = header(op: op, normalized: normalized)
        for input in inputs {
            for file in files(input) {
                guard FileSystem.exists(file) else { h.update("missing \(file.utf8.count):\(file)\n"); continue }
                h.update("file \(file.utf8.count):\(file) sha256=\(try hashFile(file))\n")
            }
        }
        return SHA256.hex(h.finalize())
    }

    private static func header(op: String, normalized: [(String, JSONValue)]) -> SHA256 {
        var h = SHA256()
        h.update("opconvert-batch-fingerprint-v1\nop=\(op)\noptions=\(JSONWriter.serialize(.object(normalized)))\n")
        return h
    }

    /// The regular files an input stands for: itself, or those below it, sorted.
    static func files(_ path: String, depth: Int = 0) -> [String] {
        guard FileSystem.isDirectory(path), depth <= maxDepth else { return [path] }
        let names = ((try? FileSystem.list(path)) ?? []).sorted()
        return names.flatMap { name -> [String] in
            let p = FileSystem.join(path, name)
            if FileSystem.isDirectory(p) { return files(p, depth: depth + 1) }
            return FileSystem.isRegularFile(p) ? [p] : []
        }
    }

    static func hashFile(_ path: String) throws -> String {
        let fd = try POSIX.open(path, O_RDONLY | O_CLOEXEC)
        defer { POSIX.close(fd) }
        var h = SHA256()
        let size = 8 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = POSIX.read(fd, into: buffer.baseAddress, count: size)
            if n < 0 { throw IOError(path: path, operation: "read") }
            if n == 0 { break }
            h.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return SHA256.hex(h.finalize())
    }

    static func modificationTime(_ st: FileStatus) -> (Int, Int) {
        #if canImport(Glibc)
        return (Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec))
        #else
        return (Int(st.st_mtimespec.tv_sec), Int(st.st_mtimespec.tv_nsec))
        #endif
    }
}

/// `.opconvert-batch.json`: what a finished batch job records about its output. Inside a
/// directory output it is written into the temporary before the directory's rename, so it
/// appears exactly when the complete output does. A file output cannot hold it: it goes
/// beside, as `.NAME.opconvert-batch.json`, written just before the file's rename and
/// naming the file's inode, size and mtime, so a record whose file is missing or was
/// replaced since vouches for nothing.
package struct BatchRecord: Equatable {
    package var op: String
    package var line: Int
    package var fingerprint: String
    package var contentFingerprint: String?
    /// File outputs: the output's identity when it was installed.
    package var outputIdentity: String?

    package static let name = OutputInstallHook.batchRecordName

    package static func path(forOutput output: String, isDirectory: Bool) -> String {
        if isDirectory { return FileSystem.join(output, name) }
        let (dir, file) = FileSystem.split(output)
        return FileSystem.join(dir, ".\(file)\(name)")
    }

    package static func identity(of path: String) -> String? {
        guard let st = POSIX.stat(path) else { return nil }
        let (sec, nsec) = BatchFingerprint.modificationTime(st)
        return "inode=\(st.st_ino) dev=\(st.st_dev) size=\(st.st_size) mtime=\(sec).\(nsec)"
    }

    var json: String {
        var members: [(String, JSONValue)] = [("version", .int(1)), ("op", .string(op)), ("line", .int(Int64(line))),
                                              ("fingerprint", .string(fingerprint))]
        if let contentFingerprint { members.append(("content_fingerprint", .string(contentFingerprint))) }
        if let outputIdentity { members.append(("output_identity", .string(outputIdentity))) }
        return JSONWriter.serialize(.object(members), style: .python(indent: 2, sortKeys: false)) + "\n"
    }

    /// nil for anything that is not a record this version wrote.
    package static func read(_ path: String) -> BatchRecord? {
        guard let bytes = try? FileSystem.readAll(path), let v = try? JSONParser.parse(bytes),
              v["version"]?.intValue == 1, let op = v["op"]?.stringValue, let fp = v["fingerprint"]?.stringValue else { return nil }
        return BatchRecord(op: op, line: v["line"]?.intValue ?? 0, fingerprint: fp,
                           contentFingerprint: v["content_fingerprint"]?.stringValue,
                           outputIdentity: v["output_identity"]?.stringValue)
    }

    func write(to path: String) throws {
        let file = try OutputFile(path: path)
        try file.write(Array(json.utf8))
        try file.commit(sync: true)
    }
}
