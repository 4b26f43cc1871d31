import COpConvertKernels
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Temporary outputs in progress, with the output each becomes: errors name the user's
/// path rather than the temporary one, and an interrupted run removes them.
public enum TemporaryPaths {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var finals: [String: String] = [:]
    nonisolated(unsafe) private static var discarded = 0

    static func register(_ path: String, final: String) { lock.withLock { finals[path] = final } }
    static func unregister(_ path: String) { lock.withLock { _ = finals.removeValue(forKey: path) } }

    /// An unfinished output was removed (counted for the interrupt message).
    static func discard(_ path: String) {
        lock.withLock { if finals.removeValue(forKey: path) != nil { discarded += 1 } }
    }

    /// `path` with a temporary output's name replaced by the output's own.
    static func userFacing(_ path: String) -> String {
        lock.withLock {
            for (tmp, final) in finals where path == tmp || path.hasPrefix(tmp + "/") {
                return final + path.dropFirst(tmp.count)
            }
            return path
        }
    }

    /// Removes every registered temporary; returns how many outputs were unfinished.
    static func removeAll() -> Int {
        let (pending, count) = lock.withLock { () -> ([String], Int) in
            let p = Array(finals.keys)
            finals.removeAll()
            let n = discarded + p.count
            discarded = 0
            return (p, n)
        }
        for p in pending { FileSystem.removeTree(p) }
        return count
    }
}

/// The run was interrupted by a signal (SIGINT, SIGTERM, SIGHUP).
public struct Interrupted: CategorizedError {
    public var signal: Int32
    public var description: String { "interrupted by signal \(signal)" }
    /// The executable exits 128 + the signal for these (Options.swift), not by category.
    public var category: ErrorCategory { .internal }
}

/// Interrupts end a run in order: the handler only records the signal; the work notices
/// it at its next write or step (`check()`), unwinds (each unfinished output removing its
/// temporary), and the executable then exits with 128 + the signal through `finish`. If the
/// work does not stop within a grace period, or a second signal comes, the temporaries are
/// removed and the process ends at once, but never in the middle of renaming an output
/// into place.
public enum Interrupts {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []
    nonisolated(unsafe) private static var received: Int32 = 0
    nonisolated(unsafe) private static var criticalDepth = 0
    nonisolated(unsafe) private static var finishing = false
    /// Seconds the work has to stop by itself before the process is ended.
    static let grace = 10.0

    /// The signal received, if any.
    public static var signal: Int32? {
        let s = lock.withLock { received }
        return s == 0 ? nil : s
    }

    /// Throws `Interrupted` once a signal has come. Cheap: call it per write or step.
    public static func check() throws(Interrupted) {
        if let s = signal { throw Interrupted(signal: s) }
    }

    /// Tests: behave as if `sig` had come (0: as if none had).
    package static func simulate(_ sig: Int32) { lock.withLock { received = sig } }

    /// Runs `body` (renaming an output into place) without being ended half-way.
    static func critical<T>(_ body: () throws -> T) rethrows -> T {
        lock.withLock { criticalDepth += 1 }
        defer { lock.withLock { criticalDepth -= 1 } }
        return try body()
    }

    /// Installs the handlers (the executable calls this once at start).
    public static func install() {
        lock.withLock {
            guard sources.isEmpty else { return }
            for sig in [SIGINT, SIGTERM, SIGHUP] {
                Glibc.signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { received(sig) }
                source.resume()
                sources.append(source)
            }
        }
    }

    private static func received(_ sig: Int32) {
        let first = lock.withLock { () -> Bool in
            if received != 0 { return false }
            received = sig
            return true
        }
        if first {
            DispatchQueue.global().asyncAfter(deadline: .now() + grace) { finish(sig) }
        } else {
            finish(lock.withLock { received })
        }
    }

    /// Removes what is left of unfinished outputs, says so, and ends the process with
    /// 128 + the signal, as shells report it. Waits for an output being renamed into place.
    public static func finish(_ sig: Int32) -> Never {
        let alreadyFinishing = lock.withLock { () -> Bool in
            defer { finishing = true }
            return finishing
        }
        if alreadyFinishing { while true { pause() } }
        for _ in 0..<500 where lock.withLock({ criticalDepth > 0 }) { usleep(10_000) }
        let n = TemporaryPaths.removeAll()
        let what = n == 0 ? "no unfinished output" : "removed \(n) unfinished output\(n == 1 ? "" : "s")"
        FileHandle.standardError.write(Data("\nopconvert: interrupted by \(signalName(sig)); \(what)\n".utf8))
        opc_exit_now(128 + sig)
    }

    static func signalName(_ sig: Int32) -> String {
        switch sig {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(sig)"
        }
    }
}
