import Foundation
import XCTest
import OpConvertKit

/// Every command given each wrong kind of input: one line on stderr naming the path, and
/// the README's exit code (66 missing, 65 exists but wrong, 73 output, 64 usage).
final class InputErrorCLITests: XCTestCase {
    typealias Result = CLIRun
    func run(_ args: [String]) throws -> CLIRun { try runOpconvert(args) }
    func scratch() -> String { cliScratch() }

    func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
    }

    /// The wrong inputs, made fresh in a scratch directory.
    struct Bad {
        var missing, empty, random, text, emptyDir, junkDir: String
    }

    func makeBadInputs(_ dir: String) -> Bad {
        let b = Bad(missing: dir + "/no-such-input", empty: dir + "/empty.safetensors", random: dir + "/random.safetensors",
                    text: dir + "/notes.txt", emptyDir: dir + "/emptydir.safetensors", junkDir: dir + "/junk")
        FileManager.default.createFile(atPath: b.empty, contents: Data())
        var rng = SystemRandomNumberGenerator()
        var noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
        // Random bytes of an unknown format: no magic number at 0 (zstd, zip, ELF, pickle all
        // start below 0xA5 or differ) and no JSON-like byte at 8, which would make it a damaged
        // safetensors file instead (about 1 draw in 50 did).
        noise[0] = 0xA5
        noise[8] = 0xFF
        FileManager.default.createFile(atPath: b.random, contents: Data(noise))
        FileManager.default.createFile(atPath: b.text, contents: Data("just some notes\nnot weights\n".utf8))
        try! FileManager.default.createDirectory(atPath: b.emptyDir, withIntermediateDirectories: false)
        try! FileManager.default.createDirectory(atPath: b.junkDir, withIntermediateDirectories: false)
        FileManager.default.createFile(atPath: b.junkDir + "/README.md", contents: Data("hello".utf8))
        return b
    }

    /// A tiny Linear+ReLU network and dataset, for train's --plugin cases.
    func makeTrainProblem(_ dir: String) throws -> (base: String, data: String) {
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        let w = [Float](repeating: 0.1, count: 3 * 4), b = [Float](repeating: 0, count: 3)
        try SafetensorsWriter.write(path: base, tensors: [
            (TensorSpec(name: "layers.0.weight", dtype: .f32, shape: [3, 4]), w.withUnsafeBytes { [UInt8]($0) }),
            (TensorSpec(name: "layers.0.bias", dtype: .f32, shape: [3]), b.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: ["format": "pt"])
        let x = [Float](repeating: 0.5, count: 8 * 4), y = [Int64](repeating: 1, count: 8)
        try SafetensorsWriter.write(path: data, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [8, 4]), x.withUnsafeBytes { [UInt8]($0) }),
            (TensorSpec(name: "labels", dtype: .i64, shape: [8]), y.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        return (base, data)
    }

    struct Case {
        var args: [String]
        var status: Int32
        /// The path the error line must name.
        var path: String
        /// A phrase the error must contain (what it is / what was expected).
        var says: String
    }

    func check(_ cases: [Case], file: StaticString = #filePath, line: UInt = #line) throws {
        for c in cases {
            let r = try run(c.args)
            let label = c.args.joined(separator: " ")
            XCTAssertEqual(r.status, c.status, "\(label): \(r.stderr)", file: file, line: line)
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
            XCTAssertEqual(lines.count, 1, "\(label): stderr should be one line: \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: "), "\(label): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(c.path), "\(label): error does not name \(c.path): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(c.says), "\(label): error does not say \"\(c.says)\": \(r.stderr)", file: file, line: line)
            XCTAssertEqual(r.stdout, "", "\(label)", file: file, line: line)
        }
    }

    let model = "fixtures/peft/models/llama_f32"
    let adapter = "fixtures/peft/adapters/llama_lora"
    let checkpoint = "fixtures/op/checkpoints/op_lora_f32"

    func testInspectAndConvertRefuseEachWrongInput() throws {
        let dir = scratch()
        let bad = makeBadInputs(dir)
        var cases: [Case] = []
        for command in [["inspect"], ["convert"]] {
            let out = command == ["convert"] ? ["-o", dir + "/out"] : []
            cases += [
                Case(args: command + [bad.missing] + out, status: 66, path: bad.missing, says: "does not exist"),
                Case(args: command + [bad.empty] + out, status: 65, path: bad.empty, says: "not a safetensors file: an empty file"),
                Case(args: command + [bad.random] + out, status: 65, path: bad.random, says: "not a safetensors file"),
                Case(args: command + [bad.text] + out, status: 65, path: bad.text, says: "not a safetensors file: a text file"),
                Case(args: command + [bad.emptyDir] + out, status: 65, path: bad.emptyDir, says: "an empty directory"),
                Case(args: command + [bad.junkDir] + out, status: 65, path: bad.junkDir, says: "neither weights nor an adapter config"),
                Case(args: command + [model + "/config.json"] + out, status: 65, path: "config.json", says: "not a safetensors file: a JSON file"),
            ]
        }
        // Compressed inputs: not zstd at all, empty, or a zstd stream cut short.
        let fakeZst = dir + "/words.safetensors.zst", emptyZst = dir + "/empty.safetensors.zst", cutZst = dir + "/cut.safetensors.zst"
        FileManager.default.createFile(atPath: fakeZst, contents: Data("plain text, not zstd".utf8))
        FileManager.default.createFile(atPath: emptyZst, contents: Data())
        let whole = FileManager.default.contents(atPath: CLITests.repoRoot + "/fixtures/op/checkpoints/op_lora_zst/op_model.safetensors.zst")!
        FileManager.default.createFile(atPath: cutZst, contents: whole.prefix(whole.count / 2))
        cases += [
            Case(args: ["inspect", fakeZst], status: 65, path: fakeZst, says: "not zstd-compressed safetensors: a text file"),
            Case(args: ["inspect", emptyZst], status: 65, path: emptyZst, says: "not zstd-compressed safetensors: an empty file"),
            Case(args: ["inspect", cutZst], status: 65, path: cutZst, says: "damaged zstd data"),
        ]
        try check(cases)
        XCTAssertEqual(try FileSystem.list(dir).filter { $0.hasPrefix("out") || $0.hasPrefix(".out") }, [], "nothing written")
    }

    func testMergeRefusesEachWrongBaseAndAdapter() throws {
        let dir = scratch()
        let bad = makeBadInputs(dir)
        let out = ["-o", dir + "/out"]
        try check([
            // BASE
            Case(args: ["merge", bad.missing, adapter] + out, status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["merge", bad.empty, adapter] + out, status: 65, path: bad.empty, says: "not a safetensors file"),
            Case(args: ["merge", bad.random, adapter] + out, status: 65, path: bad.random, says: "not a safetensors file"),
            Case(args: ["merge", bad.text, adapter] + out, status: 65, path: bad.text, says: "not a safetensors file"),
            Case(args: ["merge", bad.emptyDir, adapter] + out, status: 65, path: bad.emptyDir, says: "an empty directory"),
            Case(args: ["merge", adapter, adapter] + out, status: 65, path: adapter, says: "a PEFT adapter, not a model"),
            Case(args: ["merge", checkpoint, adapter] + out, status: 65, path: checkpoint, says: "an OP checkpoint, not a model"),
            // ADAPTER
            Case(args: ["merge", model, bad.missing] + out, status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["merge", model, bad.empty] + out, status: 65, path: bad.empty, says: "where an adapter directory is needed"),
            Case(args: ["merge", model, bad.random] + out, status: 65, path: bad.random, says: "where an adapter directory is needed"),
            Case(args: ["merge", model, bad.text] + out, status: 65, path: bad.text, says: "a text file where an adapter directory is needed"),
            Case(args: ["merge", model, bad.emptyDir] + out, status: 65, path: bad.emptyDir, says: "an empty directory"),
            Case(args: ["merge", model, bad.junkDir] + out, status: 65, path: bad.junkDir, says: "neither weights nor an adapter config"),
            Case(args: ["merge", model, model] + out, status: 65, path: model, says: "a model directory, not an adapter"),
            Case(args: ["merge", model, adapter + "/adapter_config.json"] + out, status: 65, path: "adapter_config.json", says: "name the directory"),
        ])
    }

    func testMaterializeRefusesEachWrongCheckpointBaseAndKeyMap() throws {
        let dir = scratch()
        let bad = makeBadInputs(dir)
        let out = ["-o", dir + "/out"]
        try check([
            Case(args: ["materialize", bad.missing] + out, status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["materialize", bad.empty] + out, status: 65, path: bad.empty, says: "where an OP checkpoint directory is needed"),
            Case(args: ["materialize", bad.text] + out, status: 65, path: bad.text, says: "where an OP checkpoint directory is needed"),
            Case(args: ["materialize", bad.emptyDir] + out, status: 65, path: bad.emptyDir, says: "an empty directory"),
            Case(args: ["materialize", bad.junkDir] + out, status: 65, path: bad.junkDir, says: "expected an OP checkpoint directory"),
            Case(args: ["materialize", adapter] + out, status: 65, path: adapter, says: "a PEFT adapter, not an OP checkpoint"),
            Case(args: ["materialize", model] + out, status: 65, path: model, says: "a model directory, not an OP checkpoint"),
            // --base
            Case(args: ["materialize", checkpoint, "--base", bad.missing] + out, status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["materialize", checkpoint, "--base", bad.random] + out, status: 65, path: bad.random, says: "not a safetensors file"),
            Case(args: ["materialize", checkpoint, "--base", bad.emptyDir] + out, status: 65, path: bad.emptyDir, says: "an empty directory"),
            Case(args: ["materialize", checkpoint, "--base", adapter] + out, status: 65, path: adapter, says: "a PEFT adapter, not a model"),
            // --key-map
            Case(args: ["materialize", checkpoint, "--key-map", bad.missing] + out, status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["materialize", checkpoint, "--key-map", bad.text] + out, status: 65, path: bad.text, says: "invalid key map"),
            Case(args: ["materialize", checkpoint, "--key-map", bad.empty] + out, status: 65, path: bad.empty, says: "invalid key map"),
            Case(args: ["materialize", checkpoint, "--key-map", bad.junkDir] + out, status: 65, path: bad.junkDir, says: "where a file is needed"),
        ])
    }

    func testTrainRefusesEachWrongBaseDataAndPlugin() throws {
        let dir = scratch()
        let bad = makeBadInputs(dir)
        let (base, data) = try makeTrainProblem(dir)
        try check([
            Case(args: ["train", "--base", bad.missing, "--data", data], status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["train", "--base", bad.text, "--data", data], status: 65, path: bad.text, says: "not a safetensors file"),
            Case(args: ["train", "--base", bad.emptyDir, "--data", data], status: 65, path: bad.emptyDir, says: "an empty directory"),
            Case(args: ["train", "--base", adapter, "--data", data], status: 65, path: adapter, says: "a PEFT adapter, not a model"),
            Case(args: ["train", "--base", base, "--data", bad.missing], status: 66, path: bad.missing, says: "does not exist"),
            Case(args: ["train", "--base", base, "--data", bad.random], status: 65, path: bad.random, says: "not a safetensors file"),
            Case(args: ["train", "--base", base, "--data", bad.empty], status: 65, path: bad.empty, says: "not a safetensors file"),
            Case(args: ["train", "--base", base, "--data", data, "--rank", "1", "--plugin", bad.missing], status: 66, path: bad.missing, says: "not found"),
            Case(args: ["train", "--base", base, "--data", data, "--rank", "1", "--plugin", bad.text], status: 65, path: bad.text, says: "cannot load"),
            Case(args: ["train", "--base", base, "--data", data, "--rank", "1", "--plugin", bad.emptyDir], status: 65, path: bad.emptyDir, says: "cannot load"),
        ])
    }

    func testOutputsThatCannotBeCreatedExit73() throws {
        let dir = scratch()
        let bad = makeBadInputs(dir)
        try check([
            Case(args: ["convert", model, "-o", bad.text + "/out"], status: 73, path: bad.text, says: "is not a directory"),
            Case(args: ["materialize", checkpoint, "--base", model, "-o", bad.text + "/out"], status: 73, path: bad.text, says: "is not a directory"),
        ])
        // Missing parents are created, as save_pretrained does.
        for args in [["convert", model, "-o", dir + "/no/such/dir/out"], ["merge", model, adapter, "-o", dir + "/missing/out"]] {
            let r = try run(args)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(FileManager.default.fileExists(atPath: args.last! + "/model.safetensors"), args.last!)
        }
    }

    func testAbsurdShardSizesAreUsageErrorsNotCrashes() throws {
        let dir = scratch()
        for size in ["99999999999999999999GB", "99999999999999999999", "1e300GB", "0", "0B", "0.0001B", "nan", "inf", "5XB", "2000TiB"] {
            for command in [["convert", model], ["merge", model, adapter]] {
                let r = try run(command + ["-o", dir + "/out", "--max-shard-size", size])
                XCTAssertEqual(r.status, 64, "\(command[0]) --max-shard-size \(size): \(r.stderr)")
                XCTAssertTrue(r.stderr.contains("--max-shard-size"), r.stderr)
                XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr)
            }
        }
        XCTAssertEqual(try FileSystem.list(dir), [])
        let ok = try run(["convert", model, "-o", dir + "/out", "--max-shard-size", "1.5MB", "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }

    func testVerifyExits65OnNaNAfterPrintingTheReport() throws {
        let dir = scratch()
        let path = dir + "/nan.safetensors"
        let values: [Float] = [1, .nan, 2, .infinity]
        try SafetensorsWriter.write(path: path, tensors: [
            (TensorSpec(name: "fine", dtype: .f32, shape: [2]), [Float](repeating: 1, count: 2).withUnsafeBytes { [UInt8]($0) }),
            (TensorSpec(name: "weights.bad", dtype: .f32, shape: [4]), values.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        let text = try run(["inspect", path, "--verify"])
        XCTAssertEqual(text.status, 65, text.stderr)
        XCTAssertTrue(text.stdout.contains("weights.bad"), "the report is printed: \(text.stdout)")
        XCTAssertEqual(text.stderr.split(separator: "\n").count, 1, text.stderr)
        XCTAssertTrue(text.stderr.contains("2 NaN/Inf values in 1 tensor, first in tensor \"weights.bad\""), text.stderr)
        XCTAssertTrue(text.stderr.contains(path), text.stderr)

        let js = try run(["inspect", path, "--verify", "--json"])
        XCTAssertEqual(js.status, 65, js.stderr)
        let obj = try json(js.stdout)   // one object: the report with the error in it
        XCTAssertEqual(obj["ok"] as? Bool, false)
        XCTAssertEqual(obj["exit_code"] as? Int, 65)
        XCTAssertTrue((obj["error"] as? String ?? "").contains("weights.bad"))
        XCTAssertEqual((obj["tensors"] as? [[String: Any]])?.last?["non_finite"] as? Int, 2)
        XCTAssertEqual(obj["warnings"] as? [String], [])

        // Finite data verifies cleanly.
        let fine = try run(["inspect", model, "--verify", "--json"])
        XCTAssertEqual(fine.status, 0, fine.stderr)
        XCTAssertEqual(try json(fine.stdout)["ok"] as? Bool, true)
    }

    func testEveryJSONResultHasAWarningsArray() throws {
        let dir = scratch()
        let results = [
            try run(["inspect", model, "--json"]),
            try run(["convert", model, "-o", dir + "/c", "--json"]),
            try run(["merge", model, adapter, "-o", dir + "/m", "--json"]),
            try run(["materialize", checkpoint, "--base", model, "-o", dir + "/a", "--json"]),
            try run(["train", "factorize", "--random", "6x5", "--rank", "2", "--steps", "3", "--json"]),
        ]
        for r in results {
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try json(r.stdout)["warnings"] as? [String], [], r.stdout)
            XCTAssertFalse(r.stderr.contains("warning"), r.stderr)
        }
    }

    func testWarningsReachStderrAndJSONOnce() throws {
        let dir = scratch()
        // An adapter whose config leaves out lora_alpha, merged with weight 0.
        let copy = dir + "/adapter"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + adapter, toPath: copy)
        var config = try json(String(decoding: FileManager.default.contents(atPath: copy + "/adapter_config.json")!, as: UTF8.self))
        config.removeValue(forKey: "lora_alpha")
        FileManager.default.createFile(atPath: copy + "/adapter_config.json", contents: try JSONSerialization.data(withJSONObject: config))

        let text = try run(["merge", model, copy, "-o", dir + "/t", "--weight", "0"])
        XCTAssertEqual(text.status, 0, text.stderr)
        let lines = text.stderr.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, text.stderr)
        XCTAssertTrue(lines.allSatisfy { $0.hasPrefix("opconvert: warning: ") }, text.stderr)
        XCTAssertTrue(lines.contains { $0.contains("\"lora_alpha\" is missing; using PEFT's default lora_alpha = 8") }, text.stderr)
        XCTAssertTrue(lines.contains { $0.contains("--weight 0") && $0.contains(copy) }, text.stderr)

        let js = try run(["merge", model, copy, "-o", dir + "/j", "--weight", "0", "--json"])
        XCTAssertEqual(js.status, 0, js.stderr)
        XCTAssertEqual(js.stdout.components(separatedBy: "\"warnings\"").count, 2, "one warnings key: \(js.stdout)")
        let warnings = try json(js.stdout)["warnings"] as? [String] ?? []
        XCTAssertEqual(warnings.count, 2, "\(warnings)")
        XCTAssertEqual(Set(warnings.map { "opconvert: warning: " + $0 }), Set(js.stderr.split(separator: "\n").map(String.init)))

        let inspect = try run(["inspect", copy, "--json"])
        XCTAssertEqual(try json(inspect.stdout)["warnings"] as? [String], [warnings.first { $0.contains("lora_alpha") }!])
    }

    func testConvertedAdapterAndCheckpointKeepTheirFilesAndStillWork() throws {
        let dir = scratch()
        // PEFT adapter -> bf16: adapter_config.json (and a README) come along.
        let src = dir + "/lora"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + adapter, toPath: src)
        FileManager.default.createFile(atPath: src + "/README.md", contents: Data("model card".utf8))
        let converted = dir + "/lora-bf16"
        let c = try run(["convert", src, "-o", converted, "--dtype", "bf16", "--json"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertEqual(try FileSystem.list(converted), ["README.md", "adapter_config.json", "adapter_model.safetensors"])
        XCTAssertEqual(FileManager.default.contents(atPath: converted + "/adapter_config.json"),
                       FileManager.default.contents(atPath: src + "/adapter_config.json"))
        let inspected = try json(try run(["inspect", converted, "--json"]).stdout)
        XCTAssertEqual(inspected["kind"] as? String, "peft-adapter")
        XCTAssertEqual((inspected["totals"] as? [String: Any]).flatMap { ($0["by_dtype"] as? [String: Any])?.keys.sorted() }, ["BF16"])
        let merged = try run(["merge", model, converted, "-o", dir + "/merged", "--json"])
        XCTAssertEqual(merged.status, 0, merged.stderr)
        XCTAssertEqual(try json(merged.stdout)["merged_tensors"] as? Int, 14)

        // OP checkpoint -> bf16, compressed: op_config.json and the README come along.
        let op = dir + "/op"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + checkpoint, toPath: op)
        FileManager.default.createFile(atPath: op + "/README.md", contents: Data("notes".utf8))
        let opOut = dir + "/op-bf16"
        let oc = try run(["convert", op, "-o", opOut, "--dtype", "bf16", "--compress", "--json"])
        XCTAssertEqual(oc.status, 0, oc.stderr)
        XCTAssertEqual(try FileSystem.list(opOut), ["README.md", "op_config.json", "op_model.safetensors.zst"])
        XCTAssertEqual((try json(oc.stdout)["files"] as? [String])?.map { FileSystem.split($0).name }, ["op_config.json", "op_model.safetensors.zst", "README.md"])
        XCTAssertEqual(try json(try run(["inspect", opOut, "--json"]).stdout)["kind"] as? String, "op-checkpoint")
        let opMerged = try run(["merge", model, opOut, "-o", dir + "/op-merged", "--json"])
        XCTAssertEqual(opMerged.status, 0, opMerged.stderr)
        XCTAssertGreaterThan(try json(opMerged.stdout)["merged_tensors"] as? Int ?? 0, 0)
    }
}
