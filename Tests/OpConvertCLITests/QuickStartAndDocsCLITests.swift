import Foundation
import XCTest

/// The README's quick start runs as written (the fenced block after `<!-- quickstart -->`,
/// in a fresh directory, with the built opconvert on PATH), and no tracked document names a
/// path of one particular machine.
final class QuickStartAndDocsCLITests: XCTestCase {
    /// The command lines of the first ```sh block after the marker.
    static func quickStartCommands(_ readme: String) -> [String]? {
        guard let marker = readme.range(of: "<!-- quickstart -->"),
              let open = readme.range(of: "```sh\n", range: marker.upperBound..<readme.endIndex),
              let close = readme.range(of: "\n```", range: open.upperBound..<readme.endIndex) else { return nil }
        return readme[open.upperBound..<close.lowerBound].split(separator: "\n").map(String.init)
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty && !$0.hasPrefix("#") }
    }

    func testReadmeQuickStartRuns() throws {
        let readme = try String(contentsOfFile: CLITests.repoRoot + "/README.md", encoding: .utf8)
        let commands = try XCTUnwrap(Self.quickStartCommands(readme), "README.md has no <!-- quickstart --> ```sh block")
        XCTAssertGreaterThanOrEqual(commands.count, 2)
        let dir = cliScratch()
        let binDir = (CLITests.binary as NSString).deletingLastPathComponent
        for command in commands {
            XCTAssertTrue(command.hasPrefix("opconvert "), "quick start lines run opconvert: \(command)")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-ec", command]
            var env = ProcessInfo.processInfo.environment
            env["PATH"] = binDir + ":" + (env["PATH"] ?? "/usr/bin:/bin")
            p.environment = env
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            try p.run()
            let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "\(command)\n\(o)\n\(e)")
        }
        for made in ["demo-op/op_config.json", "demo-lora/adapter_config.json", "demo-sweep/sweep.svg"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + made), "the quick start made no \(made)")
        }
    }

    /// README.md, docs/, and every README or .md under bench/, fixtures/ and scripts/.
    static func documents() -> [String] {
        let root = CLITests.repoRoot
        var out = ["README.md"]
        for top in ["docs", "bench", "fixtures", "scripts"] {
            guard let walker = FileManager.default.enumerator(atPath: root + "/" + top) else { continue }
            while let rel = walker.nextObject() as? String {
                if rel.hasPrefix(".") || rel.contains("/.") { continue }
                if rel.hasSuffix(".md") { out.append(top + "/" + rel) }
            }
        }
        return out
    }

    func testDocsNameNoMachinePaths() throws {
        let docs = Self.documents()
        XCTAssertTrue(docs.contains("docs/architecture.md"), "\(docs)")
        for doc in docs {
            let text = try String(contentsOfFile: CLITests.repoRoot + "/" + doc, encoding: .utf8)
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                for machinePath in ["/work/", "/home/", "/root/", "/opt/swift", "/Users/"] where line.contains(machinePath) {
                    XCTFail("\(doc):\(i + 1): names \(machinePath), a path of one machine: \(line)")
                }
            }
        }
    }
}
