import Foundation
import COpConvertKernels
#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress bar on stderr, drawn only when stderr is a terminal (or when asked:
/// `--progress`), so scripts and pipes see nothing. Each draw is "\r", the line cut to the
/// terminal's width, then ESC[K (clear to the line's end), so it never wraps into a new line
/// and a shorter line leaves no tail of the longer one. Redraws at most ten times a second,
/// and at once when the phase changes.
// @unchecked: no lock; each bar is advanced by one thread at a time (the loop writing the
// output), so its counters are never touched concurrently.
public final class ProgressBar: @unchecked Sendable {
    private let label: String
    private let totalItems: Int
    private let totalBytes: Int
    private let unit: String
    private let countsBytes: Bool
    private let enabled: Bool
    private let start = DispatchTime.now().uptimeNanoseconds
    private var lastDraw: UInt64 = 0
    private var items = 0
    private var bytes = 0
    private var phase: String
    private var drawn = false
    private var finished = false
    /// Shown once every item has been handed over (the writer still flushes and syncs).
    public var completionPhase: String?

    /// `unit` names the items ("tensors", "steps"); `countsBytes` false: the byte columns
    /// (sizes, rate) are left out and `totalBytes` only measures the fraction done.
    public init(label: String, totalItems: Int, totalBytes: Int, enabled: Bool? = nil, phase: String = "",
                unit: String = "tensors", countsBytes: Bool = true) {
        self.label = label
        self.totalItems = totalItems
        self.totalBytes = max(totalBytes, 1)
        self.enabled = enabled ?? (isatty(2) == 1)
        self.phase = phase
        self.unit = unit
        self.countsBytes = countsBytes
    }

    /// Switches the phase shown ("reading", "merging", "writing", "syncing") and redraws.
    public func setPhase(_ phase: String) {
        guard phase != self.phase else { return }
        self.phase = phase
        guard enabled else { return }
        draw(DispatchTime.now().uptimeNanoseconds)
    }

    public func advance(items: Int = 1, bytes: Int, phase: String? = nil) {
        self.items += items
        self.bytes += bytes
        let done = self.items >= totalItems
        let next = done ? (completionPhase ?? phase) : phase
        let phaseChanged = next.map { $0 != self.phase } ?? false
        if let next { self.phase = next }
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        if phaseChanged || now - lastDraw > 100_000_000 || done {
            draw(now)
        }
    }

    /// A bar left unfinished (the command failed) is wiped, so the error line that follows
    /// starts at the line's beginning.
    deinit {
        if drawn && !finished { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    public func finish() {
        guard enabled else { return }
        finished = true
        phase = "done"
        draw(DispatchTime.now().uptimeNanoseconds)
        FileHandle.standardError.write(Data("\n".utf8))
    }

    private func draw(_ now: UInt64) {
        lastDraw = now
        drawn = true
        let line = Self.render(label: label, phase: phase, items: items, totalItems: totalItems, bytes: bytes,
                               totalBytes: totalBytes, elapsed: Double(now - start) / 1e9,
                               columns: Self.terminalColumns(), unit: unit, countsBytes: countsBytes)
        FileHandle.standardError.write(Data(("\r" + line + "\u{1B}[K").utf8))
    }

    /// The width of the terminal on stderr (TIOCGWINSZ), else $COLUMNS, else 80.
    public static func terminalColumns(environment: [String: String] = ProcessInfo.processInfo.environment) -> Int {
        let fromTerminal = Int(opc_terminal_columns(2))
        if fromTerminal > 0 { return fromTerminal }
        if let text = environment["COLUMNS"], let n = Int(text), n > 0 { return n }
        return 80
    }

    /// The bar's text, at most `columns - 1` characters (the last column is left free: some
    /// terminals wrap as soon as it is written). The parts go in this order of need as the
    /// width shrinks: rate, then sizes, then the count; the bar narrows to 10 cells and then
    /// goes; label, phase and ETA stay (cut only below a few columns).
    public static func render(label: String, phase: String, items: Int, totalItems: Int, bytes: Int, totalBytes: Int,
                              elapsed: Double, columns: Int, unit: String = "tensors", countsBytes: Bool = true) -> String {
        let limit = max(1, columns - 1)
        let total = max(totalBytes, 1)
        let fraction = min(1, max(0, Double(bytes) / Double(total)))
        let rate = elapsed > 0 ? Double(bytes) / elapsed : 0
        let eta: String
        if fraction >= 1 { eta = "ETA 0:00" } else if rate > 0 {
            eta = "ETA " + formatDuration(Double(total - bytes) / rate)
        } else { eta = "ETA --:--" }
        // Padded so the bar does not jump as the phase or the count changes.
        let head = phase.isEmpty ? label : label + " " + phase.padding(toLength: max(phase.count, 7), withPad: " ", startingAt: 0)
        let count = String(items).leftPadded(to: String(totalItems).count)
        // Optional parts, most needed first; dropped from the end while they do not fit.
        var parts = ["\(count)/\(totalItems) \(unit)"]
        if countsBytes {
            parts += ["\(formatBytes(bytes))/\(formatBytes(total))", "\(formatBytes(Int(rate)))/s"]
        }
        func tail() -> String { ([eta] + parts).joined(separator: "  ") }
        let minBar = 10, maxBar = 30
        // head + " [" + bar + "] " + tail
        while !parts.isEmpty && head.count + 4 + minBar + tail().count > limit { parts.removeLast() }
        let room = limit - head.count - 4 - tail().count
        let line: String
        if room >= minBar {
            let width = min(maxBar, room)
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "=", count: filled) + (filled < width ? ">" : "")
                + String(repeating: " ", count: max(0, width - filled - 1))
            line = head + " [" + bar + "] " + tail()
        } else {
            line = head + " " + tail()
        }
        return line.count > limit ? String(line.prefix(limit)) : line
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
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

/// m:ss, or h:mm:ss from an hour.
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds < 1e7 else { return "--:--" }
    let s = Int(max(0, seconds).rounded())
    if s >= 3600 { return String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) }
    return String(format: "%d:%02d", s / 60, s % 60)
}
