import Foundation
import XCTest
@testable import OpConvertKit

/// The progress bar as a terminal shows it: under a pty of 60, 80 and 120 columns every
/// rendered line fits, the updates are joined by carriage returns (no line feed before the
/// last), each clears the line's end, and the phases are named. Pipes see nothing unless
/// --progress.
final class ProgressBarCLITests: XCTestCase {
    /// Runs `opconvert args` under `script` (util-linux) with the pty set to `columns`;
    /// returns what the terminal received.
    func runUnderPty(_ args: [String], columns: Int) throws -> String {
        let script = "/usr/bin/script"
        guard FileManager.default.isExecutableFile(atPath: script) else { throw XCTSkip("no \(script) (util-linux) to make a pty") }
        let dir = cliScratch()
        let log = dir + "/pty.log"
        let quoted = ([CLITests.binary] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: script)
        // COLUMNS unset: the width must come from the terminal itself (TIOCGWINSZ).
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "COLUMNS")
        p.environment = env
        p.arguments = ["-qfec", "stty cols \(columns) rows 24; exec \(quoted)", log]
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "opconvert \(args) under a pty")
        return String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
    }

    func testMergeBarFitsTheTerminalAndNeverWraps() throws {
        let base = CLITests.repoRoot + "/fixtures/peft/models/llama"
        let adapter = CLITests.repoRoot + "/fixtures/peft/adapters/llama_lora"
        for columns in [60, 80, 120] {
            let out = cliScratch() + "/merged"
            let tty = try runUnderPty(["merge", base, adapter, "-o", out], columns: columns)
            guard let first = tty.range(of: "\rmerge ") else { return XCTFail("\(columns) columns: no bar drawn:\n\(tty)") }
            let clear = "\u{1B}[K"
            guard let last = tty.range(of: clear, options: .backwards) else { return XCTFail("no ESC[K in \(tty)") }
            let bar = String(tty[first.lowerBound..<last.upperBound])
            XCTAssertFalse(bar.contains("\n"), "\(columns) columns: a line feed between updates:\n\(bar.debugDescription)")
            let updates = bar.split(separator: "\r").map(String.init)
            XCTAssertGreaterThan(updates.count, 3, "\(columns) columns: one draw per phase at least")
            for update in updates {
                XCTAssertTrue(update.hasSuffix(clear), "\(columns) columns: update does not clear the line end: \(update.debugDescription)")
                let visible = update.replacingOccurrences(of: clear, with: "")
                XCTAssertLessThan(visible.count, columns, "\(columns) columns: \(visible.debugDescription) is \(visible.count) wide")
                XCTAssertTrue(visible.contains("ETA"), visible)
            }
            for phase in ["reading", "merging", "writing", "syncing", "done"] {
                XCTAssertTrue(updates.contains { $0.hasPrefix("merge \(phase)") }, "\(columns) columns: no \(phase) phase in \(updates)")
            }
            // The finished bar ends its line: the summary starts on the next one.
            XCTAssertTrue(tty[last.upperBound...].hasPrefix("\r\n") || tty[last.upperBound...].hasPrefix("\n"), tty)
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/config.json"))
        }
    }

    func testPipesSeeNoBarUnlessAsked() throws {
        let base = "fixtures/peft/models/llama", adapter = "fixtures/peft/adapters/llama_lora"
        let quiet = try runOpconvert(["merge", base, adapter, "-o", cliScratch() + "/m"])
        XCTAssertEqual(quiet.status, 0, quiet.stderr)
        XCTAssertFalse(quiet.stderr.contains("\u{1B}[K") || quiet.stderr.contains("\r"), quiet.stderr.debugDescription)
        let asked = try runOpconvert(["merge", base, adapter, "-o", cliScratch() + "/m", "--progress"])
        XCTAssertEqual(asked.status, 0, asked.stderr)
        XCTAssertTrue(asked.stderr.contains("\rmerge done"), asked.stderr.debugDescription)
        XCTAssertTrue(asked.stderr.contains("\u{1B}[K"), asked.stderr.debugDescription)
        let both = try runOpconvert(["merge", base, adapter, "-o", cliScratch() + "/m", "--progress", "--no-progress"])
        XCTAssertEqual(both.status, 0, both.stderr)
        XCTAssertFalse(both.stderr.contains("\u{1B}[K"), "--no-progress wins: \(both.stderr.debugDescription)")
    }

    func testRenderedLineNeverExceedsTheWidth() {
        for columns in 1...200 {
            for (items, bytes) in [(0, 0), (7, 123_456_789), (2912, 98_765_432_100)] {
                let line = ProgressBar.render(label: "merge", phase: "syncing", items: items, totalItems: 2912, bytes: bytes,
                                              totalBytes: 98_765_432_100, elapsed: 12.5, columns: columns)
                XCTAssertLessThan(line.count, max(columns, 2), "\(columns) columns: \(line)")
                if columns >= 40 { XCTAssertTrue(line.contains("ETA"), line) }
                if columns >= 60 { XCTAssertTrue(line.contains("["), "a bar fits in \(columns): \(line)") }
            }
        }
        let wide = ProgressBar.render(label: "merge", phase: "writing", items: 1, totalItems: 4, bytes: 250, totalBytes: 1000,
                                      elapsed: 1, columns: 120)
        XCTAssertTrue(wide.contains("1/4 tensors") && wide.contains("250 B/1.00 kB") && wide.contains("250 B/s") && wide.contains("ETA 0:03"), wide)
    }

    func testColumnsFallback() {
        // Under the test runner stderr is normally a pipe: the width comes from COLUMNS, else 80.
        guard isatty(2) == 0 else { return }
        XCTAssertEqual(ProgressBar.terminalColumns(environment: ["COLUMNS": "97"]), 97)
        XCTAssertEqual(ProgressBar.terminalColumns(environment: ["COLUMNS": "junk"]), 80)
        XCTAssertEqual(ProgressBar.terminalColumns(environment: [:]), 80)
    }
}
