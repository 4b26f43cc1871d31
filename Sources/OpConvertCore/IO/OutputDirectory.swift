import COpConvertKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Names of opconvert's temporaries: `.NAME.opconvert-tmp-PID-RANDOM` beside the output
/// NAME while it is written, and `.NAME.opconvert-old-PID` for an old output moved aside
/// where the file system cannot swap two directories atomically.
package enum TemporaryName {
    static let tmpMarker = ".opconvert-tmp-"
    static let oldMarker = ".opconvert-old-"

    package static func temporary(for final: String) -> String {
        let (dir, name) = FileSystem.split(final)
        return FileSystem.join(dir, ".\(name)\(tmpMarker)\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    }

    static func aside(for final: String) -> String {
        let (dir, name) = FileSystem.split(final)
        return FileSystem.join(dir, ".\(name)\(oldMarker)\(getpid())")
    }

    /// The process id in a temporary's name of the output `name`, and whether it is an
    /// old output moved aside.
    package static func parse(_ entry: String, output name: String) -> (pid: Int32, old: Bool)? {
        let prefix = "." + name
        guard entry.hasPrefix(prefix) else { return nil }
        let rest = entry.dropFirst(prefix.count)
        for (marker, old) in [(tmpMarker, false), (oldMarker, true)] where rest.hasPrefix(marker) {
            let tail = rest.dropFirst(marker.count)
            let digits = old ? tail : tail.prefix { $0 != "-" }
            if let pid = Int32(digits), pid > 0 { return (pid, old) }
        }
        return nil
    }
}

/// Leftovers of runs that died (SIGKILL, power loss) beside an output: their temporaries are
/// removed, an old output moved aside is put back if nothing replaced it.
enum StaleTemporaries {
    static func clean(beside final: String) {
        let (dir, name) = FileSystem.split(final)
        guard let entries = try? FileSystem.list(dir) else { return }
        for entry in entries {
            guard let (pid, old) = TemporaryName.parse(entry, output: name), pid != getpid(), !isAlive(pid) else { continue }
            let path = FileSystem.join(dir, entry)
            if old && !FileSystem.exists(final), (try? FileSystem.rename(path, final)) != nil {
                Warnings.emit("\(final): put back the previous output that an interrupted run (pid \(pid)) had moved aside")
                continue
            }
            FileSystem.removeTree(path)
            Warnings.emit("\(path): removed a temporary left by an interrupted run (pid \(pid))")
        }
    }

    static func isAlive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }
}

/// Moves finished temporaries into place: atomic in every case, so a crash at any point
/// leaves the old output or the new one under the final name, never neither.
enum OutputInstaller {
    static func install(temporary: String, final: String, kind: OutputKind, policy: OutputPolicy) throws {
        try Interrupts.check()
        // An input truncated while it was read gave zeros (not a signal): never install that.
        try MappedFile.checkAllIntact()
        try OutputInstallHook.beforeInstall?.body(temporary, final, kind)
        // What the run wrote may replace what an earlier run wrote under the same names.
        let names = kind == .directory ? ((try? FileSystem.list(temporary)) ?? []) : []
        try OutputGuard.check(final, kind: kind, policy: policy, names: names)
        try Interrupts.critical {
            guard FileSystem.exists(final) else {
                try FileSystem.renameNoReplace(temporary, final)
                return
            }
            if kind != .directory {
                try FileSystem.rename(temporary, final)   // rename(2) replaces a file atomically
                return
            }
            let replaced = try FileSystem.list(final)
            let r = opc_rename_exchange(temporary, final)
            if r == 0 {
                // The old output now sits under the temporary name; it goes with it.
                removeReplaced(temporary, names: replaced)
                return
            }
            guard r == -EINVAL || r == -ENOSYS else { throw IOError(path: final, operation: "replace", code: -r) }
            // No atomic swap here: move the old one aside (a later run puts it back if this
            // one dies before the new one is in place), then the new one in, then drop the old.
            let aside = TemporaryName.aside(for: final)
            try FileSystem.rename(final, aside)
            do { try FileSystem.rename(temporary, final) } catch {
                try? FileSystem.rename(aside, final)
                throw error
            }
            removeReplaced(aside, names: replaced)
        }
        FileSystem.syncDirectory(FileSystem.split(final).directory)
    }

    /// Removes a replaced output directory: only the files it held when it was checked; a
    /// file that appeared since is kept (and said).
    static func removeReplaced(_ path: String, names: [String]) {
        for name in names { POSIX.unlink(FileSystem.join(path, name)) }
        if !POSIX.rmdir(path) {
            Warnings.emit("\(path): kept the replaced output's directory: files appeared in it while opconvert ran")
        }
    }
}

/// A directory built under a temporary name beside its target and renamed into place by
/// `commit()`; removed if dropped uncommitted. Creation checks the output against the
/// command's inputs and the --overwrite rule, creates missing parents, and removes stale
/// temporaries of dead runs.
public final class OutputDirectory {
    public let finalPath: String
    public let temporaryPath: String
    private let policy: OutputPolicy
    private var createdParents: [String] = []
    private var committed = false

    /// - names: the files this run will write (an existing output may hold those besides
    ///   opconvert's standard names).
    public init(path: String, policy: OutputPolicy, names: [String] = []) throws {
        finalPath = path
        self.policy = policy
        try OutputGuard.check(path, kind: .directory, policy: policy, names: names)
        createdParents = try FileSystem.makeParents(of: path)
        StaleTemporaries.clean(beside: path)
        temporaryPath = TemporaryName.temporary(for: path)
        do { try FileSystem.makeDirectory(temporaryPath) } catch {
            for d in createdParents.reversed() { POSIX.rmdir(d) }
            throw IOError(path: path, operation: "create", code: error.code)
        }
        TemporaryPaths.register(temporaryPath, final: path)
    }

    public func path(_ name: String) -> String { FileSystem.join(temporaryPath, name) }

    /// Renames the finished directory into place (replacing an existing one only as the
    /// policy allows).
    public func commit() throws {
        FileSystem.syncDirectory(temporaryPath)
        try OutputInstaller.install(temporary: temporaryPath, final: finalPath, kind: .directory, policy: policy)
        committed = true
        TemporaryPaths.unregister(temporaryPath)
    }

    deinit {
        if !committed {
            FileSystem.removeTree(temporaryPath)
            TemporaryPaths.discard(temporaryPath)
            for d in createdParents.reversed() { POSIX.rmdir(d) }
        }
    }
}
