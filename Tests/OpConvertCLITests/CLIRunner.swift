import Foundation
import XCTest

/// One run of the built `opconvert` binary (CLITests finds it), as scripts see it.
struct CLIRun {
    var status: Int32
    var stdout: String
    var stderr: String
    /// The process was ended by a signal's default action (not by its own exit).
    var killedBySignal: Bool
}

extension XCTestCase {
    /// Runs opconvert from the repository root; with `interruptAfter`, sends it SIGINT
    /// after that many seconds.
    func runOpconvert(_ args: [String], interruptAfter delay: Double? = nil) throws -> CLIRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        if let delay {
            Thread.sleep(forTimeInterval: delay)
            kill(p.processIdentifier, SIGINT)
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self), killedBySignal: p.terminationReason == .uncaughtSignal)
    }

    /// A fresh empty directory, removed when the test ends.
    func cliScratch() -> String {
        let path = NSTemporaryDirectory() + "opconvert-cli-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }
}
