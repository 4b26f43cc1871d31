import Foundation
import XCTest
import OpConvertKit

/// Runs the built `opconvert` binary as scripts do: exit codes, stdout JSON, stderr lines.
final class CLITests: XCTestCase {
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
        }
        fatalError("repository root not found")
    }()

    static let binary: String = {
        if let env = ProcessInfo.processInfo.environment["OPCONVERT_BIN"] { return env }
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("opconvert").path,
            Bundle.main.bundleURL.appendingPathComponent("opconvert").path,
            repoRoot + "/.build/debug/opconvert",
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    func run(_ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: Self.repoRoot)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    func scratch() -> String {
        let path = NSTemporaryDirectory() + "opconvert-cli-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func json(_ text: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
    }

    func testVersionAndHelp() throws {
        let v = try run(["--version"])
        XCTAssertEqual(v.status, 0)
        XCTAssertEqual(v.stdout.trimmingCharacters(in: .whitespacesAndNewlines), OpConvertVersion.string)
        for sub in ["inspect", "convert", "merge", "materialize", "train", "train finetune", "train factorize"] {
            let h = try run(sub.split(separator: " ").map(String.init) + ["--help"])
            XCTAssertEqual(h.status, 0, sub)
            XCTAssertTrue(h.stdout.contains("USAGE"), sub)
        }
    }

    func testInspectJSONIsStable() throws {
        let r = try run(["inspect", "fixtures/peft/models/llama", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try json(r.stdout)
        XCTAssertEqual(obj["kind"] as? String, "model")
        XCTAssertEqual((obj["files"] as? [Any])?.count, 3)
        let totals = obj["totals"] as! [String: Any]
        XCTAssertEqual(totals["tensors"] as? Int, (obj["tensors"] as! [Any]).count)
        XCTAssertNotNil((totals["by_dtype"] as? [String: Any])?["BF16"])
        let t = (obj["tensors"] as! [[String: Any]])[0]
        XCTAssertEqual(Set(t.keys), ["name", "dtype", "shape", "bytes", "file", "non_finite"])
        XCTAssertTrue((obj["other_files"] as! [String]).contains("config.json"))
    }

    func testErrorsAreOneLineWithDocumentedCodes() throws {
        let bad = try run(["inspect", "fixtures/safetensors/malformed/offsets_gap.safetensors"])
        XCTAssertEqual(bad.status, 65)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1)
        XCTAssertTrue(bad.stderr.hasPrefix("opconvert: error: "))
        XCTAssertTrue(bad.stderr.contains("offsets_gap.safetensors"), bad.stderr)
        XCTAssertEqual(bad.stdout, "")

        let missing = try run(["inspect", "no/such/file.safetensors", "--json"])
        XCTAssertEqual(missing.status, 66)
        let obj = try json(missing.stdout)
        XCTAssertEqual(obj["ok"] as? Bool, false)
        XCTAssertEqual(obj["exit_code"] as? Int, 66)

        let usage = try run(["merge", "fixtures/peft/models/llama_f32", "fixtures/peft/adapters/llama_lora", "--weight", "1", "--weight", "2", "-o", scratch() + "/x"])
        XCTAssertEqual(usage.status, 64)
    }

    func testConvertShardsCastsAndCarriesFiles() throws {
        let out = scratch() + "/f16"
        let r = try run(["convert", "fixtures/peft/models/llama_f32", "-o", out, "--dtype", "f16", "--max-shard-size", "100KB", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "", "no progress bar when stderr is not a terminal")
        let summary = try json(r.stdout)
        XCTAssertGreaterThan(summary["cast_tensors"] as! Int, 0)
        let names = try FileSystem.list(out)
        XCTAssertTrue(names.contains("model.safetensors.index.json"))
        XCTAssertTrue(names.contains("tokenizer_config.json"))
        XCTAssertTrue(names.contains("model-00001-of-0000\(names.filter { $0.hasPrefix("model-") }.count).safetensors"))
        let config = try json(String(decoding: FileManager.default.contents(atPath: out + "/config.json")!, as: UTF8.self))
        XCTAssertEqual(config["dtype"] as? String, "float16")
        // Every shard is under the limit unless it holds a single tensor.
        let store = try TensorStore.open(out)
        for f in store.files where f.tensors.count > 1 { XCTAssertLessThanOrEqual(f.dataSize, 100_000) }
        // Values: f16 rounding of the f32 source, through the index.
        let src = try TensorStore.open("fixtures/peft/models/llama_f32".absolute)
        for e in src.entries {
            let g = store.entry(named: e.info.name)!
            XCTAssertEqual(g.info.dtype, e.info.dtype == .f32 ? .f16 : e.info.dtype)
            XCTAssertEqual(g.info.shape, e.info.shape)
            let want = try TensorData.stored(src, e).floats().map { Float(Float16($0)) }
            let got = try TensorData.stored(store, g).floats()
            XCTAssertEqual(got, want, e.info.name)
        }
        // Refuses to overwrite, leaves the output as it was.
        let again = try run(["convert", "fixtures/peft/models/llama_f32", "-o", out, "--dtype", "bf16"])
        XCTAssertEqual(again.status, 73)
        XCTAssertTrue(again.stderr.contains("--overwrite"))
        XCTAssertEqual(try TensorStore.open(out).entries.first?.info.dtype, .f16)
        // Converting back with --overwrite works and is deterministic.
        let o1 = try run(["convert", out, "-o", out + "-a.safetensors", "--dtype", "bf16"])
        let o2 = try run(["convert", out, "-o", out + "-b.safetensors", "--dtype", "bf16"])
        XCTAssertEqual(o1.status, 0, o1.stderr)
        XCTAssertEqual(o2.status, 0, o2.stderr)
        XCTAssertEqual(FileManager.default.contents(atPath: out + "-a.safetensors"), FileManager.default.contents(atPath: out + "-b.safetensors"))
    }

    func testTrainAndFactorizeFromTheCommandLine() throws {
        let dir = scratch()
        // factorize owns its flags (it used to share them with `train`).
        let f = try run(["train", "factorize", "--random", "12x10", "--rank", "2", "--steps", "50", "--lr", "2e-2", "--json"])
        XCTAssertEqual(f.status, 0, f.stderr)
        let r = try json(f.stdout)
        XCTAssertEqual(r["rank"] as? Int, 2)
        XCTAssertEqual((r["runs"] as! [[String: Any]]).first?["lr"] as? Double, 2e-2)
        let missing = try run(["train", "--base", "x.safetensors", "--data", "y.safetensors", "--plugin", dir + "/none.so", "-o", dir + "/o"])
        XCTAssertNotEqual(missing.status, 0)
        let noPlugin = try run(["train", "factorize", "--steps", "2", "--plugin", dir + "/none.so"])
        XCTAssertEqual(noPlugin.status, 66, noPlugin.stderr)
        XCTAssertTrue(noPlugin.stderr.contains("none.so"), noPlugin.stderr)
    }

    func testMergeRefusesOutputEqualToBaseAndLeavesNothingOnError() throws {
        let dir = scratch()
        let same = try run(["merge", "fixtures/peft/models/llama_f32", "fixtures/peft/adapters/llama_lora", "-o", "fixtures/peft/models/llama_f32", "--overwrite"])
        XCTAssertEqual(same.status, 73, same.stderr)
        let bad = try run(["merge", "fixtures/peft/models/llama_f32", "fixtures/peft/bad/missing_module", "-o", dir + "/out", "--json"])
        XCTAssertEqual(bad.status, 65)
        XCTAssertTrue(bad.stderr.contains("qkv_proj"), bad.stderr)
        XCTAssertEqual(try FileSystem.list(dir), [])
        let ok = try run(["merge", "fixtures/peft/models/llama_f32", "fixtures/peft/adapters/llama_lora", "-o", dir + "/out", "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let s = try json(ok.stdout)
        XCTAssertEqual(s["merged_tensors"] as? Int, 14)
    }
}

extension String {
    var absolute: String { hasPrefix("/") ? self : CLITests.repoRoot + "/" + self }
}
