import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress bar on stderr, drawn only when stderr is a terminal, so scripts
/// and pipes see nothing. Redraws at most ten times a second.
// @unchecked: no lock; each bar is advanced by one thread at a time (the loop writing the
// output), so its counters are never touched concurrently.
public final class ProgressBar: @unchecked Sendable {
    private let label: String
    private let totalItems: Int
    private let totalBytes: Int
    private let enabled: Bool
    private let start = DispatchTime.now().uptimeNanoseconds
    private var lastDraw: UInt64 = 0
    private var items = 0
    private var bytes = 0

    public init(label: String, totalItems: Int, totalBytes: Int, enabled: Bool? = nil) {
        self.label = label
        self.totalItems = totalItems
        self.totalBytes = max(totalBytes, 1)
        self.enabled = enabled ?? (isatty(2) == 1)
    }

    public func advance(items: Int = 1, bytes: Int) {
        self.items += items
        self.bytes += bytes
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        if now - lastDraw > 100_000_000 || self.items == totalItems {
            lastDraw = now
            draw(now)
        }
    }

    public func finish() {
        guard enabled else { return }
        draw(DispatchTime.now().uptimeNanoseconds)
        FileHandle.standardError.write(Data("\n".utf8))
    }

    private func draw(_ now: UInt64) {
        let fraction = min(1, Double(bytes) / Double(totalBytes))
        let width = 28
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "=", count: filled) + (filled < width ? ">" : "") + String(repeating: " ", count: max(0, width - filled - 1))
        let elapsed = Double(now - start) / 1e9
        let rate = elapsed > 0 ? Double(bytes) / elapsed : 0
        let eta = rate > 0 ? Double(totalBytes - bytes) / rate : 0
        let line = String(format: "\r%@ [%@] %d/%d tensors  %@/%@  %@/s  ETA %@ ",
                          label, bar, items, totalItems, formatBytes(bytes), formatBytes(totalBytes),
                          formatBytes(Int(rate)), formatDuration(eta))
        FileHandle.standardError.write(Data(line.utf8))
    }
}

/// "1.23 GB" in decimal units, as sizes are given on the command line.
public func formatBytes(_ n: Int) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var v = Double(n)
    var u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
}

func formatDuration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    return String(format: "%d:%02d", s / 60, s % 60)
}
