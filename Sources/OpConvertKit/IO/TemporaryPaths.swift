import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Temporary outputs in progress. If the process is interrupted (Ctrl-C, SIGTERM, SIGHUP),
/// they are removed before it exits, so an interrupted run leaves nothing behind either.
public enum TemporaryPaths {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var paths: Set<String> = []
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    static func register(_ path: String) { lock.withLock { _ = paths.insert(path) } }
    static func unregister(_ path: String) { lock.withLock { _ = paths.remove(path) } }

    /// Installs the handlers (the executable calls this once at start). Exit status is
    /// 128 + the signal number, as shells report it.
    public static func removeOnInterrupt() {
        lock.withLock {
            guard sources.isEmpty else { return }
            for sig in [SIGINT, SIGTERM, SIGHUP] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler {
                    let pending = lock.withLock { paths }
                    for p in pending { FileSystem.removeTree(p) }
                    FileHandle.standardError.write(Data("\nopconvert: interrupted; removed \(pending.count) unfinished output\(pending.count == 1 ? "" : "s")\n".utf8))
                    exit(128 + sig)
                }
                source.resume()
                sources.append(source)
            }
        }
    }
}
