import Foundation
import XCTest
@testable import OpConvertKit

final class BatchTests: XCTestCase {
    let base = TestPaths.fixture("peft/models/llama")
    let baseF32 = TestPaths.fixture("peft/models/llama_f32")
    let lora = TestPaths.fixture("peft/adapters/llama_lora")
    let loraB = TestPaths.fixture("peft/adapters/llama_lora_b")
    let checkpoint = TestPaths.fixture("op/checkpoints/op_lora_f32")

    func writeManifest(_ dir: String, _ lines: [String], name: String = "m.jsonl") -> String {
        let path = dir + "/" + name
        writeFile(path, Array((lines.joined(separator: "\n") + "\n").utf8))
        return path
    }

    func run(_ manifest: String, shard: BatchShard? = nil, jobs: Int = 1, verify: Bool = false) throws -> BatchSummary {
        try BatchRunner.run(BatchOptions(manifest: manifest, shard: shard, jobs: jobs, verifyInputs: verify))
    }

    func mergeLine(_ output: String, adapters: String? = nil, extra: String = "") -> String {
        #"{"op": "merge", "args": {"base": "\#(base)", "adapters": \#(adapters ?? "[\"\(lora)\"]")\#(extra)}, "output": "\#(output)"}"#
    }

    func convertLine(_ output: String, input: String? = nil, extra: String = "") -> String {
        #"{"op": "convert", "args": {"input": "\#(input ?? base)", "dtype": "bf16"\#(extra)}, "output": "\#(output)"}"#
    }

    /// The files of an output (a directory's, or the file itself), the batch record left out.
    func contents(_ path: String) -> [String: [UInt8]] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [:] }
        if !isDir.boolValue { return ["": readBytes(path)] }
        var out: [String: [UInt8]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] where name != ".opconvert-batch.json" {
            out[name] = readBytes(path + "/" + name)
        }
        return out
    }

    func assertManifestError(_ lines: [String], _ expected: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, lines)
        XCTAssertThrowsError(try run(m), file: file, line: line) { error in
            let text = "\(error)"
            for e in expected { XCTAssertTrue(text.contains(e), "\(text) lacks \(e)", file: file, line: line) }
            XCTAssertNotEqual(ExitStatus.of(error), .failure, text, file: file, line: line)
        }
        // Nothing ran: no output was created.
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"), file: file, line: line)
    }

    // MARK: manifest errors

    func testManifestErrorsNameTheLineAndKey() throws {
        let good = mergeLine("out/a")
        try assertManifestError([good, #"{"op": "merge", "args": {"base": "\#(base)", "adapters": ["\#(lora)"], "wieght": [1]}, "output": "out/b"}"#],
                                ["m.jsonl:2:", "unknown args key \"wieght\"", "merge takes"])
        try assertManifestError([good, "", "# comment", #"{"op": "merge", "arg": {}, "output": "out/b"}"#], ["m.jsonl:4:", "unknown key \"arg\""])
        try assertManifestError([good, "{not json"], ["m.jsonl:2:", "not a JSON object"])
        try assertManifestError([#"["merge"]"#], ["m.jsonl:1:", "a job is a JSON object"])
        try assertManifestError([#"{"args": {}, "output": "out/a"}"#], ["m.jsonl:1:", "missing \"op\""])
        try assertManifestError([#"{"op": "merge", "args": {"base": "x", "adapters": ["y"]}}"#], ["m.jsonl:1:", "missing \"output\""])
        try assertManifestError([good, #"{"op": "frobnicate", "output": "out/b"}"#], ["line 2:", "unknown op \"frobnicate\"", "merge, materialize, convert"])
        try assertManifestError([mergeLine("out/a", extra: #", "dtype": "f8""#)], ["m.jsonl:1:", "\"dtype\" is f32, bf16 or f16"])
        try assertManifestError([mergeLine("out/a", extra: #", "weight": [1, 2]"#)], ["m.jsonl:1:", "\"weight\" has 2 values for 1 adapters"])
        try assertManifestError([mergeLine("out/a", adapters: "[]")], ["m.jsonl:1:", "\"adapters\" is a non-empty array"])
        try assertManifestError([mergeLine("out/a", adapters: #"[{"path": "x", "scale": 2}]"#)], ["m.jsonl:1:", "adapters[0]"])
        try assertManifestError([mergeLine("out/a", extra: #", "max_shard_size": "lots""#)], ["m.jsonl:1:", "max_shard_size"])
        try assertManifestError([convertLine("out/a.safetensors", extra: #", "max_shard_size": "1GB""#)], ["m.jsonl:1:", "directory outputs"])
        try assertManifestError([mergeLine("out/a", extra: #", "overwrite": "yes""#)], ["m.jsonl:1:", "\"overwrite\" is true or false"])
        try assertManifestError(["", "# only comments"], ["no jobs"])
    }

    func testMissingManifestIsMissingInput() throws {
        XCTAssertThrowsError(try run(TestPaths.scratch(self) + "/none.jsonl")) { XCTAssertEqual(ExitStatus.of($0), .noInput, "\($0)") }
    }

    // MARK: conflicts

    func testConflictingOutputsAreRefusedBeforeAnythingRuns() throws {
        try assertManifestError([mergeLine("out/a"), convertLine("out/b"), mergeLine("out/a")], ["line 3:", "also line 1's output"])
        try assertManifestError([mergeLine("out/a"), convertLine("out/a/inner")], ["line 2:", "inside line 1's output"])
        try assertManifestError([convertLine("out/inner/x"), mergeLine("out/inner")], ["inside line 2's output"])
        // One job reads what another writes (or a directory holding it).
        try assertManifestError([mergeLine("out/a"), convertLine("out/b", input: "out/a")], ["line 1:", "which line 2 reads"])
        try assertManifestError([mergeLine("out/a"), convertLine("out/b", input: "out")], ["line 1:", "which line 2 reads"])
        try assertManifestError([mergeLine("out/a"), convertLine("out/b", input: "out/a/model.safetensors")], ["which line 2 reads"])
        // The reader's own output below the same directory does not hide another writer's.
        try assertManifestError([convertLine("out/b", input: "out"), mergeLine("out/a")], ["line 2:", "which line 1 reads"])
        let dir = TestPaths.scratch(self)
        XCTAssertThrowsError(try run(writeManifest(dir, [mergeLine("out/a"), mergeLine("./out/../out/a")]))) {
            XCTAssertEqual(ExitStatus.of($0), .cannotCreate, "\($0)")
        }
    }

    // MARK: sharding

    func testShardsCoverEveryJobExactlyOnce() throws {
        for total in 0...41 {
            for count in 1...13 {
                var seen = [Int](repeating: 0, count: total)
                for index in 0..<count {
                    for p in BatchSharding.positions(of: BatchShard(index: index, count: count), total: total) { seen[p] += 1 }
                }
                XCTAssertEqual(seen, [Int](repeating: 1, count: total), "total \(total), count \(count)")
            }
        }
    }

    func testShardFlagAndEnvironment() throws {
        XCTAssertEqual(try BatchSharding.parse("2/5"), BatchShard(index: 2, count: 5))
        for bad in ["5/5", "-1/3", "1/0", "1", "a/b", "1/2/3"] {
            XCTAssertThrowsError(try BatchSharding.parse(bad)) { XCTAssertEqual(ExitStatus.of($0), .usage) }
        }
        func env(_ e: [String: String], count: Int? = nil) throws -> BatchShard? {
            try BatchSharding.resolve(flag: nil, shardCount: count, environment: e)
        }
        XCTAssertNil(try env([:]))
        // Slurm arrays starting at 1 (the common --array=1-N) and at 0.
        XCTAssertEqual(try env(["SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"]), BatchShard(index: 0, count: 4))
        XCTAssertEqual(try env(["SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"]), BatchShard(index: 3, count: 4))
        XCTAssertEqual(try env(["SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"]), BatchShard(index: 0, count: 2))
        XCTAssertEqual(try env(["SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
                                "SLURM_ARRAY_TASK_COUNT": "3"]), BatchShard(index: 2, count: 3))
        XCTAssertThrowsError(try env(["SLURM_ARRAY_TASK_ID": "3"]))
        XCTAssertThrowsError(try env(["SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"]))
        XCTAssertThrowsError(try env(["SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"]))
        // Kubernetes Indexed Jobs: the count from --shard-count or OPCONVERT_SHARD_COUNT.
        XCTAssertEqual(try env(["JOB_COMPLETION_INDEX": "3"], count: 8), BatchShard(index: 3, count: 8))
        XCTAssertEqual(try env(["JOB_COMPLETION_INDEX": "0", "OPCONVERT_SHARD_COUNT": "2"]), BatchShard(index: 0, count: 2))
        XCTAssertThrowsError(try env(["JOB_COMPLETION_INDEX": "0"]))
        XCTAssertThrowsError(try env(["JOB_COMPLETION_INDEX": "2", "OPCONVERT_SHARD_COUNT": "2"]))
        XCTAssertThrowsError(try env([:], count: 3))
        // --shard wins over the environment.
        XCTAssertEqual(try BatchSharding.resolve(flag: BatchShard(index: 1, count: 2), shardCount: nil,
                                                 environment: ["SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"]),
                       BatchShard(index: 1, count: 2))
    }

    /// Runs a real manifest once per shard for several counts: every job's output is made,
    /// each job is reported by exactly one shard, and a second pass skips them all.
    func testShardedRunsRunEveryJobOnce() throws {
        let dir = TestPaths.scratch(self)
        let lines = (0..<7).map { i in i % 2 == 0 ? convertLine("out/c\(i).safetensors") : mergeLine("out/m\(i)") }
        let m = writeManifest(dir, lines)
        for count in [1, 2, 3, 7, 9] {
            try? FileManager.default.removeItem(atPath: dir + "/out")
            var ran: [Int] = []
            for index in 0..<count {
                let s = try run(m, shard: BatchShard(index: index, count: count))
                XCTAssertEqual(s.failed, 0)
                XCTAssertEqual(s.skipped, 0)
                ran += s.results.map(\.line)
            }
            XCTAssertEqual(ran.sorted(), Array(1...7), "count \(count)")
            for i in 0..<7 { XCTAssertTrue(FileManager.default.fileExists(atPath: dir + (i % 2 == 0 ? "/out/c\(i).safetensors" : "/out/m\(i)"))) }
            var skipped = 0
            for index in 0..<count { skipped += try run(m, shard: BatchShard(index: index, count: count)).skipped }
            XCTAssertEqual(skipped, 7)
        }
    }

    /// The scheduler files in docs/examples, with the environment their tasks get.
    func testDocumentedSlurmAndKubernetesExamplesShardTheManifest() throws {
        let slurm = try String(contentsOfFile: TestPaths.repoRoot + "/docs/examples/slurm-batch.sh", encoding: .utf8)
        let array = try XCTUnwrap(slurm.split(separator: "\n").first { $0.hasPrefix("#SBATCH --array=") })
        let range = array.dropFirst("#SBATCH --array=".count).split(separator: "%")[0].split(separator: "-").compactMap { Int($0) }
        XCTAssertEqual(range.count, 2)
        XCTAssertTrue(slurm.contains("opconvert batch"))
        let total = 23
        var seen = [Int](repeating: 0, count: total)
        for id in range[0]...range[1] {
            let e = ["SLURM_ARRAY_TASK_ID": "\(id)", "SLURM_ARRAY_TASK_MIN": "\(range[0])", "SLURM_ARRAY_TASK_MAX": "\(range[1])",
                     "SLURM_ARRAY_TASK_COUNT": "\(range[1] - range[0] + 1)"]
            let shard = try BatchSharding.resolve(flag: nil, shardCount: nil, environment: e)
            for p in BatchSharding.positions(of: shard, total: total) { seen[p] += 1 }
        }
        XCTAssertEqual(seen, [Int](repeating: 1, count: total))

        let k8s = try String(contentsOfFile: TestPaths.repoRoot + "/docs/examples/kubernetes-indexed-job.yaml", encoding: .utf8)
        func field(_ name: String) -> Int? {
            k8s.split(separator: "\n").lazy.map { $0.trimmingCharacters(in: .whitespaces) }
                .first { $0.hasPrefix(name + ":") }
                .flatMap { Int($0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))) }
        }
        let completions = try XCTUnwrap(field("completions"))
        XCTAssertTrue(k8s.contains("completionMode: Indexed"))
        let lines = k8s.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let countLine = try XCTUnwrap(lines.firstIndex(of: "- name: OPCONVERT_SHARD_COUNT"))
        let value = lines[countLine + 1].replacingOccurrences(of: "value:", with: "").trimmingCharacters(in: CharacterSet(charactersIn: " \""))
        XCTAssertEqual(Int(value), completions, "OPCONVERT_SHARD_COUNT must equal completions")
        seen = [Int](repeating: 0, count: total)
        for index in 0..<completions {
            let shard = try BatchSharding.resolve(flag: nil, shardCount: nil,
                                                  environment: ["JOB_COMPLETION_INDEX": "\(index)", "OPCONVERT_SHARD_COUNT": value])
            for p in BatchSharding.positions(of: shard, total: total) { seen[p] += 1 }
        }
        XCTAssertEqual(seen, [Int](repeating: 1, count: total))
    }

    // MARK: results

    func testResultsEqualTheSingleCommandsByteForByte() throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, [
            mergeLine("out/merged"),
            mergeLine("out/merged2.safetensors", adapters: #"["\#(lora)", {"path": "\#(loraB)", "weight": -0.5}]"#, extra: #", "dtype": "bf16""#),
            convertLine("out/converted", extra: #", "max_shard_size": "100KB""#),
            #"{"op": "materialize", "args": {"checkpoint": "\#(checkpoint)", "base": "\#(baseF32)", "dtype": "bf16"}, "output": "out/adapter"}"#,
        ])
        let s = try run(m, jobs: 2)
        XCTAssertEqual(s.results.map(\.line), [1, 2, 3, 4])
        XCTAssertEqual(s.results.filter(\.ok).count, 4, "\(s.results.compactMap(\.error))")
        XCTAssertEqual(s.exitCode, 0)

        let ref = dir + "/ref"
        _ = try Merger.run(MergeOptions(base: base, adapters: [(lora, 1)], output: ref + "/merged"))
        _ = try Merger.run(MergeOptions(base: base, adapters: [(lora, 1), (loraB, -0.5)], output: ref + "/merged2.safetensors", dtype: .bf16))
        _ = try Converter.run(ConvertOptions(input: base, output: ref + "/converted", dtype: .bf16, maxShardSize: 100_000))
        _ = try Materializer.run(MaterializeOptions(checkpoint: checkpoint, output: ref + "/adapter", dtype: .bf16, base: baseF32))
        for name in ["merged", "merged2.safetensors", "converted", "adapter"] {
            let got = contents(dir + "/out/" + name), want = contents(ref + "/" + name)
            XCTAssertFalse(want.isEmpty, name)
            XCTAssertEqual(got.keys.sorted(), want.keys.sorted(), name)
            for (k, v) in want { XCTAssertTrue(got[k] == v, "\(name)/\(k) differs from the single command's output") }
        }
        XCTAssertGreaterThan(contents(dir + "/out/converted").keys.filter { $0.hasSuffix(".safetensors") }.count, 1)
        // Records: inside directory outputs, beside file outputs.
        XCTAssertNotNil(BatchRecord.read(dir + "/out/merged/.opconvert-batch.json"))
        let beside = try XCTUnwrap(BatchRecord.read(dir + "/out/.merged2.safetensors.opconvert-batch.json"))
        XCTAssertEqual(beside.outputIdentity, BatchRecord.identity(of: dir + "/out/merged2.safetensors"))
        XCTAssertEqual(beside.line, 2)
    }

    func testManyJobsAtOnceGiveTheSameBytesInManifestOrder() throws {
        let dir = TestPaths.scratch(self)
        let lines = (0..<6).map { mergeLine("out/m\($0)", extra: $0 % 2 == 0 ? #", "dtype": "f16""# : "") }
        let m1 = writeManifest(dir, lines.map { $0.replacingOccurrences(of: "out/", with: "one/") }, name: "one.jsonl")
        let m4 = writeManifest(dir, lines, name: "four.jsonl")
        _ = try run(m1, jobs: 1)
        let order = LineLog()
        let s = try BatchRunner.run(BatchOptions(manifest: m4, jobs: 4)) { order.append($0.line) }
        XCTAssertEqual(order.lines, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(s.succeeded, 6)
        for i in 0..<6 { XCTAssertEqual(contents(dir + "/out/m\(i)"), contents(dir + "/one/m\(i)")) }
    }

    final class LineLog: @unchecked Sendable {
        // Safe: `lines` is only touched while holding `lock`.
        private let lock = NSLock()
        private var stored: [Int] = []
        func append(_ n: Int) { lock.withLock { stored.append(n) } }
        var lines: [Int] { lock.withLock { stored } }
    }

    func testOneFailingJobDoesNotStopTheOthers() throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, [mergeLine("out/a"), mergeLine("out/bad", adapters: "[\"\(dir)/missing\"]"), convertLine("out/c.safetensors")])
        for jobs in [1, 3] {
            try? FileManager.default.removeItem(atPath: dir + "/out")
            let s = try run(m, jobs: jobs)
            XCTAssertEqual(s.results.map(\.ok), [true, false, true])
            XCTAssertEqual(s.results[1].exitCode, 66)
            XCTAssertTrue("\(s.results[1].error!)".contains("\(dir)/missing"))
            XCTAssertEqual(s.exitCode, 66)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/bad"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/c.safetensors"))
        }
        // Failures of different kinds: exit 1.
        let m2 = writeManifest(dir, [mergeLine("out2/bad", adapters: "[\"\(dir)/missing\"]"),
                                     mergeLine("out2/bad2", adapters: "[\"\(dir)/m.jsonl\"]")], name: "m2.jsonl")
        let s2 = try run(m2)
        XCTAssertEqual(Set(s2.results.map(\.exitCode)).count, 2, "\(s2.results.map(\.exitCode))")
        XCTAssertEqual(s2.exitCode, 1)
    }

    // MARK: idempotence

    func testRerunSkipsFinishedJobsAndResumesAfterACrash() throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, [mergeLine("out/a"), convertLine("out/b.safetensors"), mergeLine("out/c", extra: #", "dtype": "bf16""#)])
        let first = try run(m)
        XCTAssertEqual(first.succeeded, 3)
        let before = [contents(dir + "/out/a"), contents(dir + "/out/b.safetensors"), contents(dir + "/out/c")]
        // A crash while job 3 was writing: its output missing, its temporary left behind by a
        // process that is gone.
        try FileManager.default.removeItem(atPath: dir + "/out/c")
        let dead = try deadPid()
        let stale = dir + "/out/.c.opconvert-tmp-\(dead)-9"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: false)
        writeFile(stale + "/model.safetensors", [1, 2, 3])
        writeFile(stale + "/.opconvert-batch.json", Array("{}".utf8))
        let second = try run(m)
        XCTAssertEqual(second.results.map(\.skipped), [true, true, false])
        XCTAssertEqual(second.succeeded, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        XCTAssertEqual([contents(dir + "/out/a"), contents(dir + "/out/b.safetensors"), contents(dir + "/out/c")], before)
        // A record whose file output is gone or was replaced since vouches for nothing.
        try FileManager.default.removeItem(atPath: dir + "/out/b.safetensors")
        XCTAssertEqual(try run(m).results.map(\.skipped), [true, false, true])
        let replaced = dir + "/out/b.safetensors"
        let bytes = readBytes(replaced)
        try FileManager.default.removeItem(atPath: replaced)
        writeFile(replaced, bytes)
        let third = try run(m)
        XCTAssertEqual(third.results[1].exitCode, 73, "\(third.results[1].error.map { "\($0)" } ?? "ok")")
    }

    func deadPid() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    func testChangedOptionsOrInputsAreRefusedUnlessOverwrite() throws {
        let dir = TestPaths.scratch(self)
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: base, toPath: model)
        let line = #"{"op": "convert", "args": {"input": "model", "dtype": "bf16"}, "output": "out/c"}"#
        let m = writeManifest(dir, [line])
        XCTAssertEqual(try run(m).succeeded, 1)
        XCTAssertEqual(try run(m).skipped, 1)
        // Other options: refused, named.
        let m2 = writeManifest(dir, [line.replacingOccurrences(of: "bf16", with: "f16")], name: "m2.jsonl")
        let refused = try run(m2)
        XCTAssertEqual(refused.exitCode, 73)
        XCTAssertTrue("\(refused.results[0].error!)".contains("line 1: \(dir)/out/c: exists from another job's inputs or options"), "\(refused.results[0].error!)")
        // The same with overwrite: runs, and then is up to date.
        let m3 = writeManifest(dir, [line.replacingOccurrences(of: "bf16\"", with: "f16\", \"overwrite\": true")], name: "m3.jsonl")
        XCTAssertEqual(try run(m3).succeeded, 1)
        XCTAssertEqual(try run(m3).skipped, 1)
        // Back to the first options: the record holds the f16 job's, so it is refused.
        XCTAssertEqual(try run(m, verify: true).results[0].exitCode, 73)
        // An input touched (same bytes, new mtime): the metadata fingerprint changes;
        // --verify-inputs compares contents and still skips once it has recorded them.
        let m4 = writeManifest(dir, [line.replacingOccurrences(of: "bf16\"", with: "bf16\", \"overwrite\": true")], name: "m4.jsonl")
        XCTAssertEqual(try run(m4, verify: true).succeeded, 1)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: model + "/model-00002-of-00003.safetensors")
        let touched = try run(m)
        XCTAssertEqual(touched.results[0].exitCode, 73)
        XCTAssertEqual(try run(m, verify: true).skipped, 1)
        // A different byte: verify refuses too.
        var bytes = readBytes(model + "/model-00002-of-00003.safetensors")
        bytes[bytes.count - 1] ^= 1
        writeFile(model + "/model-00002-of-00003.safetensors", bytes)
        XCTAssertEqual(try run(m, verify: true).results[0].exitCode, 73)
    }

    func testAnOutputNoBatchJobWroteIsRefused() throws {
        let dir = TestPaths.scratch(self)
        _ = try Merger.run(MergeOptions(base: base, adapters: [(lora, 1)], output: dir + "/out/a"))
        let s = try run(writeManifest(dir, [mergeLine("out/a")]))
        XCTAssertEqual(s.exitCode, 73)
        XCTAssertTrue("\(s.results[0].error!)".contains("no batch job finished it"))
        XCTAssertEqual(try run(writeManifest(dir, [mergeLine("out/a", extra: #", "overwrite": true"#)])).succeeded, 1)
        XCTAssertNotNil(BatchRecord.read(dir + "/out/a/.opconvert-batch.json"))
    }

    /// After Ctrl-C no job starts: each is reported as not started (exit 130), nothing is
    /// written, no record either.
    func testInterruptedRunStartsNothing() throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, [mergeLine("out/a")])
        Interrupts.simulate(SIGINT)
        defer { Interrupts.simulate(0) }
        let s = try run(m)
        XCTAssertEqual(s.exitCode, 128 + SIGINT)
        XCTAssertEqual(s.results[0].exitCode, 128 + SIGINT)
        Interrupts.simulate(0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/a"))
        XCTAssertEqual(((try? FileManager.default.contentsOfDirectory(atPath: dir + "/out")) ?? []).filter { !$0.hasPrefix(".") || $0.contains("batch") }, [])
    }

    func testMemoryEstimateBoundsJobs() throws {
        let dir = TestPaths.scratch(self)
        let m = writeManifest(dir, [mergeLine("out/a"), mergeLine("out/b")])
        XCTAssertThrowsError(try BatchRunner.run(BatchOptions(manifest: m, jobs: 2, memoryLimit: 300 << 20))) { error in
            XCTAssertEqual(ExitStatus.of(error), .usage)
            XCTAssertTrue("\(error)".contains("--jobs 2"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
        XCTAssertEqual(try BatchRunner.run(BatchOptions(manifest: m, jobs: 1, memoryLimit: 300 << 20)).succeeded, 2)
        XCTAssertThrowsError(try BatchRunner.run(BatchOptions(manifest: m, jobs: 0))) { XCTAssertEqual(ExitStatus.of($0), .usage) }
    }

    func testSHA256KnownAnswers() {
        func digest(_ bytes: [UInt8], pieces: Int = 1) -> String {
            var h = SHA256()
            let step = max(1, bytes.count / pieces)
            var i = 0
            while i < bytes.count { h.update(bytes[i..<min(bytes.count, i + step)]); i += step }
            return SHA256.hex(h.finalize())
        }
        XCTAssertEqual(digest([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(digest(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(digest(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        let thousand = (0..<1000).map { UInt8($0 % 251) }
        for pieces in [1, 3, 7, 64, 1000] {
            XCTAssertEqual(digest(thousand, pieces: pieces), "4e4c294b331f7a2099a379bec34b9f9fc03dc46ab465d998f4d683da53487e6d")
        }
    }
}
