import Foundation
import XCTest

final class BatchCLITests: XCTestCase {
    let base = CLITests.repoRoot + "/fixtures/peft/models/llama"
    let lora = CLITests.repoRoot + "/fixtures/peft/adapters/llama_lora"

    /// Runs opconvert with extra environment variables (the scheduler's), without the
    /// test process's own SLURM_/JOB_ variables.
    func runBatch(_ args: [String], environment extra: [String: String] = [:]) throws -> CLIRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        var env = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("SLURM_") && $0.key != "JOB_COMPLETION_INDEX" && $0.key != "OPCONVERT_SHARD_COUNT"
        }
        env.merge(extra) { $1 }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self), killedBySignal: p.terminationReason == .uncaughtSignal)
    }

    func manifest(_ dir: String, jobs: Int, bad: Set<Int> = []) -> String {
        let lines = (0..<jobs).map { i in
            let adapter = bad.contains(i) ? dir + "/missing" : lora
            return #"{"op": "merge", "args": {"base": "\#(base)", "adapters": ["\#(adapter)"]}, "output": "out/m\#(i)"}"#
        }
        let path = dir + "/jobs.jsonl"
        FileManager.default.createFile(atPath: path, contents: Data((lines.joined(separator: "\n") + "\n").utf8))
        return path
    }

    func jsonLines(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").map { line in
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
        }
    }

    func testJSONLinesPerJobThenASummaryAndRerunSkips() throws {
        let dir = cliScratch()
        let m = manifest(dir, jobs: 3)
        let r = try runBatch(["batch", m, "--json", "--jobs", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try jsonLines(r.stdout)
        XCTAssertEqual(lines.count, 4)
        XCTAssertEqual(lines.prefix(3).map { $0["line"] as? Int }, [1, 2, 3])
        for l in lines.prefix(3) {
            XCTAssertEqual(Set(l.keys), ["ok", "line", "op", "output", "exit_code", "error", "seconds", "skipped", "warnings", "command", "version", "non_finite_numbers"])
            XCTAssertEqual(l["ok"] as? Bool, true)
            XCTAssertEqual(l["skipped"] as? Bool, false)
            XCTAssertEqual(l["op"] as? String, "merge")
            XCTAssertTrue(l["error"] is NSNull)
        }
        XCTAssertEqual(lines[0]["output"] as? String, dir + "/out/m0")
        XCTAssertEqual(lines[3]["summary"] as? Bool, true)
        // The JSON contract's fixed keys, on the job lines and the summary line alike.
        for l in lines { XCTAssertEqual(l["command"] as? String, "batch"); XCTAssertNotNil(l["version"] as? String) }
        XCTAssertEqual(lines[3]["succeeded"] as? Int, 3)
        XCTAssertEqual(lines[3]["exit_code"] as? Int, 0)
        let again = try jsonLines(try runBatch(["batch", m, "--json"]).stdout)
        XCTAssertEqual(again.prefix(3).map { $0["skipped"] as? Bool }, [true, true, true])
        XCTAssertEqual(again[3]["skipped"] as? Int, 3)
    }

    func testHumanLinesAndTheFailingJobsExitStatus() throws {
        let dir = cliScratch()
        let m = manifest(dir, jobs: 3, bad: [1])
        let r = try runBatch(["batch", m])
        XCTAssertEqual(r.status, 66, r.stderr)
        let lines = r.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 3, r.stdout)
        XCTAssertTrue(lines[0].hasPrefix("line 1 merge \(dir)/out/m0: ok in "), String(lines[0]))
        XCTAssertTrue(lines[1].hasPrefix("line 2 merge \(dir)/out/m1: FAILED (exit 66): \(dir)/missing"), String(lines[1]))
        XCTAssertTrue(r.stderr.contains("3 of 3 jobs: 2 ran, 0 skipped, 1 failed"), r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/m2"))
    }

    func testShardsFromTheFlagSlurmAndKubernetes() throws {
        let dir = cliScratch()
        let m = manifest(dir, jobs: 5)
        func lines(_ r: CLIRun) throws -> [Int] {
            XCTAssertEqual(r.status, 0, r.stderr)
            return try jsonLines(r.stdout).compactMap { $0["summary"] == nil ? $0["line"] as? Int : nil }
        }
        XCTAssertEqual(try lines(try runBatch(["batch", m, "--json", "--shard", "1/2"])), [2, 4])
        XCTAssertEqual(try lines(try runBatch(["batch", m, "--json"], environment: [
            "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"])), [3])
        XCTAssertEqual(try lines(try runBatch(["batch", m, "--json", "--shard-count", "2"], environment: ["JOB_COMPLETION_INDEX": "0"])), [1, 3, 5])
        XCTAssertEqual(try lines(try runBatch(["batch", m, "--json"], environment: ["JOB_COMPLETION_INDEX": "1", "OPCONVERT_SHARD_COUNT": "4"])), [2])
        // Every job has now run once: a whole-manifest run skips them all.
        let all = try jsonLines(try runBatch(["batch", m, "--json"]).stdout)
        XCTAssertEqual(all.last?["skipped"] as? Int, 5)
        XCTAssertEqual(all.last?["shard"] as? String, nil)
    }

    func testBadShardsAndManifestsAreOneLineErrors() throws {
        let dir = cliScratch()
        let m = manifest(dir, jobs: 2)
        let r = try runBatch(["batch", m, "--shard", "2/2"])
        XCTAssertEqual(r.status, 64)
        XCTAssertEqual(r.stderr, "opconvert: error: --shard: shard 2 is outside 0..1 (shards count from 0)\n")
        let slurm = try runBatch(["batch", m], environment: ["SLURM_ARRAY_TASK_ID": "1"])
        XCTAssertEqual(slurm.status, 64)
        XCTAssertTrue(slurm.stderr.contains("SLURM_ARRAY_TASK_COUNT is not"), slurm.stderr)
        let bad = dir + "/bad.jsonl"
        FileManager.default.createFile(atPath: bad, contents: Data(#"{"op": "merge", "args": {"bsae": "x"}, "output": "o"}"#.utf8))
        let e = try runBatch(["batch", bad, "--json"])
        XCTAssertEqual(e.status, 65)
        XCTAssertTrue(e.stderr.hasPrefix("opconvert: error: \(bad):1: merge: "), e.stderr)
        XCTAssertEqual(try jsonLines(e.stdout).first?["exit_code"] as? Int, 65)
        XCTAssertEqual(try runBatch(["batch", m, "--jobs", "0"]).status, 64)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    }

    /// Ctrl-C: no new job starts, the running ones unwind, exit 130; every output is
    /// either complete with its record or absent, and no temporary is left.
    func testInterruptStopsStartingJobsAndExits130() throws {
        let dir = cliScratch()
        // Enough jobs that a quiet machine is still running them when the signal comes.
        let m = manifest(dir, jobs: 400)
        let r = try runOpconvert(["batch", m, "--json", "--jobs", "2"], interruptAfter: 0.5)
        XCTAssertEqual(r.status, 130, r.stderr)
        let lines = try jsonLines(r.stdout)
        let jobs = lines.filter { $0["summary"] == nil }
        XCTAssertEqual(jobs.count, 400)
        XCTAssertTrue(jobs.contains { $0["exit_code"] as? Int == 130 })
        XCTAssertEqual(lines.last?["exit_code"] as? Int, 130)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/out")) ?? []
        XCTAssertFalse(entries.contains { $0.contains(".opconvert-tmp-") }, "\(entries)")
        for (i, job) in jobs.enumerated() {
            let out = dir + "/out/m\(i)"
            let done = FileManager.default.fileExists(atPath: out + "/.opconvert-batch.json")
            XCTAssertEqual(done, job["ok"] as? Bool, "job \(i)")
            XCTAssertEqual(FileManager.default.fileExists(atPath: out), done, "job \(i)")
        }
    }
}
