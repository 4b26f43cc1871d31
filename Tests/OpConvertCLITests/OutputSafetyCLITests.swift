import Foundation
import XCTest
@testable import OpConvertKit

/// The output rule and interrupts through the binary, as users and scripts meet them.
final class OutputSafetyCLITests: XCTestCase {
    func run(_ args: [String]) throws -> CLIRun { try runOpconvert(args) }
    func scratch() -> String { cliScratch() }

    /// Every file below `dir` with its bytes (links not followed).
    func snapshot(_ dir: String) -> [String: Data] {
        var files: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let rel = e?.nextObject() as? String {
            let p = dir + "/" + rel
            if FileSystem.isRegularFile(p) && !FileSystem.isSymbolicLink(p) { files[rel] = FileManager.default.contents(atPath: p) }
        }
        return files
    }

    func copies() throws -> (dir: String, base: String, ad: String) {
        let dir = scratch()
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/fixtures/peft/models/llama", toPath: dir + "/base")
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/fixtures/peft/adapters/llama_lora", toPath: dir + "/ad")
        return (dir, dir + "/base", dir + "/ad")
    }

    func testDestructiveOverwritesAreRefusedWithExit73AndBothPathsNamed() throws {
        let (dir, base, ad) = try copies()
        let before = snapshot(dir)
        for (output, words) in [(ad, ["is the input", ad]), (dir, ["would hold the input"]), (base + "/sub", ["inside the input", base])] {
            let r = try run(["merge", base, ad, "-o", output, "--overwrite"])
            XCTAssertEqual(r.status, 73, "\(output): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            for w in words { XCTAssertTrue(r.stderr.contains(w), "\(r.stderr) should name \(w)") }
        }
        // A device is never replaced (a FIFO here: the same rule, no root needed).
        XCTAssertEqual(mkfifo(dir + "/fifo", 0o644), 0)
        let r = try run(["convert", base, "-o", dir + "/fifo", "--overwrite", "--json"])
        XCTAssertEqual(r.status, 73, r.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(object?["exit_code"] as? Int, 73)
        XCTAssertEqual(object?["ok"] as? Bool, false)
        var st = stat()
        XCTAssertEqual(lstat(dir + "/fifo", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO)
        XCTAssertEqual(snapshot(dir), before)
    }

    func testUsageErrorsKeepTheJSONContract() throws {
        let r = try run(["merge", "base", "adapter", "-o", "out", "--json", "--no-such-flag"])
        XCTAssertEqual(r.status, 64)
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(object?["exit_code"] as? Int, 64, r.stdout)
        XCTAssertEqual(object?["ok"] as? Bool, false)
        XCTAssertTrue((object?["error"] as? String)?.contains("no-such-flag") == true, r.stdout)
        // Help is not an error: no JSON error object.
        let help = try run(["merge", "--help", "--json"])
        XCTAssertEqual(help.status, 0)
        XCTAssertFalse(help.stdout.contains("\"ok\""))
    }

    /// SIGINT at several moments of a merge: each run either finished (exit 0, complete
    /// output) or exited 130 with no output and no temporary; the inputs never change.
    func testInterruptsEndCleanlyWhateverTheMoment() throws {
        let (dir, base, ad) = try copies()
        // A base large enough that the merge takes a while: the fixture's tensors widened
        // to f32 and tiled by a conversion is still small, so write one 64 MiB tensor.
        let big = dir + "/big.safetensors"
        let rows = 4096, cols = 4096
        try SafetensorsWriter.write(path: big, tensors: [(TensorSpec(name: "w", dtype: .f32, shape: [rows, cols]),
                                                          [UInt8](repeating: 0x3c, count: rows * cols * 4))], metadata: nil)
        let before = snapshot(dir)
        var interrupted = 0
        for (i, delay) in [0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5].enumerated() {
            let out = dir + "/out\(i)"
            let r = try runOpconvert(["convert", big, "-o", out, "--dtype", "bf16"], interruptAfter: delay)
            if r.killedBySignal {
                XCTAssertEqual(r.status, SIGINT)
            } else if r.status == 0 {
                XCTAssertEqual(try TensorStore.open(out).tensorCount, 1)
            } else {
                XCTAssertEqual(r.status, 130, "delay \(delay): \(r.stderr)")
                XCTAssertFalse(FileSystem.exists(out), "delay \(delay): no output after an interrupt")
                XCTAssertFalse(r.stderr.contains("Fatal") || r.stderr.contains("Segmentation"), r.stderr)
                interrupted += 1
            }
            XCTAssertEqual(try FileSystem.list(dir).filter { $0.contains("opconvert-") }, [], "delay \(delay): temporaries left")
            try? FileManager.default.removeItem(atPath: out)
        }
        XCTAssertEqual(snapshot(dir).filter { !$0.key.hasPrefix("out") }, before)
        _ = (base, ad)
        print("interrupted \(interrupted) of 8 runs")
    }

    func testNamesWithControlCharactersArePrintedEscaped() throws {
        let dir = scratch()
        let module = "model.evil\u{1b}[2J\nname"
        let adapter = dir + "/ad"
        try PEFTAdapterWriter.write(to: adapter, config: .object([("peft_type", .string("LORA")), ("r", .int(1)), ("lora_alpha", .int(1))]),
                                    modules: [MaterializedModule(path: module, a: [1, 0], aShape: [1, 2], b: [1, 0], bShape: [2, 1],
                                                                 magnitude: nil, rank: 1)], overwrite: false)
        let r = try run(["merge", "fixtures/peft/models/llama", adapter, "-o", dir + "/out"])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertFalse(r.stderr.contains("\u{1b}"), "raw escape printed: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("model.evil\\u{1b}[2J\\nname"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
    }
}
