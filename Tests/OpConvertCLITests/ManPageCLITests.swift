import Foundation
import XCTest
@testable import OpConvertKit

/// man/opconvert.1 (scripts/generate-man.sh) renders everywhere: ASCII only, no groff
/// warning, defaults shown, EXAMPLES and an EXIT STATUS entry for every code.
final class ManPageCLITests: XCTestCase {
    var page: String { CLITests.repoRoot + "/man/opconvert.1" }

    func testPageIsASCII() throws {
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: page), "no \(page)")
        for (i, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            XCTAssertFalse(line.contains { $0 > 126 }, "man/opconvert.1:\(i + 1): non-ASCII byte: \(String(decoding: line, as: UTF8.self))")
        }
    }

    func testGroffRendersWithoutWarnings() throws {
        let groff = ["/usr/bin/groff", "/usr/local/bin/groff"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let groff else { throw XCTSkip("groff is not installed") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: groff)
        p.arguments = ["-man", "-Tascii", "-ww", "-P-cbou", page]
        p.environment = ["LC_ALL": "C", "PATH": "/usr/bin:/bin"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let rendered = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let warnings = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(warnings, "", "groff warnings")
        for section in ["NAME", "SYNOPSIS", "COMMANDS", "EXAMPLES", "EXIT STATUS", "ENVIRONMENT"] {
            XCTAssertTrue(rendered.contains("\n" + section + "\n"), "no \(section) section")
        }
        XCTAssertTrue(rendered.contains("opconvert merge fixtures/peft/models/llama"), "EXAMPLES lacks the merge example")
    }

    func testExitStatusTableAndDefaults() throws {
        let text = try String(contentsOfFile: page, encoding: .utf8)
        guard let range = text.range(of: ".SH EXIT STATUS") else { return XCTFail("no EXIT STATUS section") }
        let section = String(text[range.upperBound...]).components(separatedBy: "\n.SH ")[0]
        for status in ExitStatus.allCases {
            XCTAssertTrue(section.contains("\\fB\(status.rawValue)\\fR"), "EXIT STATUS lacks \(status.rawValue) (\(status))")
        }
        XCTAssertTrue(section.contains("\\fB130\\fR"), "EXIT STATUS lacks 130 (SIGINT)")
        // Defaults from the argument declarations: train's --rank 4, --sweep-dir lr-sweep.
        XCTAssertTrue(text.contains("LoRA rank r. (default: 4)"), "train --rank's default")
        XCTAssertTrue(text.contains("(default: lr\\-sweep)"), "train --sweep-dir's default")
    }
}
