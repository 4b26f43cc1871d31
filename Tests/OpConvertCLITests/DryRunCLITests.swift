import Foundation
import XCTest
@testable import OpConvertKit

/// --dry-run resolves everything, prints the plan and writes nothing; the plan's files and
/// sizes are those the real run writes.
final class DryRunCLITests: XCTestCase {
    let model = "fixtures/peft/models/llama_f32"

    func object(_ r: CLIRun) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout + r.stderr)
    }

    /// Every file under `dir` with its size, relative names sorted.
    func listing(_ dir: String) -> [String: Int] {
        var out: [String: Int] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let name = e?.nextObject() as? String {
            let attrs = try? FileManager.default.attributesOfItem(atPath: dir + "/" + name)
            out[name] = (attrs?[.size] as? Int) ?? -1
        }
        return out
    }

    /// The dry run writes nothing, then the real run writes exactly the planned files.
    func checkPlanMatchesRun(_ args: [String], output: String, scratch dir: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let before = listing(dir)
        let dry = try runOpconvert(args + ["--dry-run", "--json"])
        XCTAssertEqual(dry.status, 0, dry.stderr, file: file, line: line)
        XCTAssertEqual(listing(dir), before, "a dry run creates nothing", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: output), file: file, line: line)
        let plan = try object(dry)
        XCTAssertEqual(plan["dry_run"] as? Bool, true, file: file, line: line)
        let planned = (plan["files"] as? [[String: Any]] ?? []).reduce(into: [String: Int]()) { $0[$1["path"] as! String] = $1["bytes"] as? Int }
        let real = try runOpconvert(args + ["--json"])
        XCTAssertEqual(real.status, 0, real.stderr, file: file, line: line)
        let written = listing(output).reduce(into: [String: Int]()) { $0[output + "/" + $1.key] = $1.value }
        XCTAssertEqual(planned, FileManager.default.fileExists(atPath: output + "/") ? written : [output: listing(dir)[FileSystem.split(output).name] ?? -1],
                       "planned files and sizes are the written ones", file: file, line: line)
        XCTAssertEqual(plan["output_bytes"] as? Int, planned.values.reduce(0, +), file: file, line: line)
        return plan
    }

    func testMergePlanIsTheMergeAndWritesNothing() throws {
        let dir = cliScratch()
        let plan = try checkPlanMatchesRun(["merge", model, "fixtures/peft/adapters/llama_lora", "fixtures/peft/adapters/llama_dora", "--weight", "0.5", "--weight", "2",
                                            "--dtype", "bf16", "--max-shard-size", "100KB", "-o", dir + "/out"], output: dir + "/out", scratch: dir)
        let tensors = try XCTUnwrap(plan["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 29)
        let q = try XCTUnwrap(tensors.first { $0["name"] as? String == "model.layers.0.self_attn.q_proj.weight" })
        XCTAssertEqual(q["dtype_in"] as? String, "F32")
        XCTAssertEqual(q["dtype_out"] as? String, "BF16")
        let changes = try XCTUnwrap(q["changes"] as? [[String: Any]])
        XCTAssertEqual(changes.map { $0["kind"] as? String }, ["lora", "dora"], "both adapters, in order")
        // llama_lora: lora_alpha 16 / r 8 = 2, times --weight 0.5.
        XCTAssertEqual(changes[0]["scale"] as? Double, 1.0)
        XCTAssertEqual(changes[0]["module"] as? String, "model.layers.0.self_attn.q_proj")
        XCTAssertTrue((changes[1]["adapter"] as? String ?? "").hasSuffix("/fixtures/peft/adapters/llama_dora"))
        XCTAssertNotNil(plan["available_bytes"] as? Int)
    }

    func testMergePlanTableNamesModulesScalesAndFiles() throws {
        let dir = cliScratch()
        let r = try runOpconvert(["merge", model, "fixtures/peft/adapters/llama_lora", "-o", dir + "/out", "--dry-run"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix("dry run: nothing written\n"), r.stdout)
        XCTAssertTrue(r.stdout.contains("model.layers.1.mlp.up_proj.weight"), r.stdout)
        XCTAssertTrue(r.stdout.contains("lora model.layers.1.mlp.up_proj x2.0"), r.stdout)
        XCTAssertTrue(r.stdout.contains(dir + "/out/model.safetensors"), r.stdout)
        XCTAssertTrue(r.stdout.contains("free space: "), r.stdout)
        XCTAssertEqual(listing(dir), [:])
    }

    func testConvertAndMaterializePlans() throws {
        let dir = cliScratch()
        _ = try checkPlanMatchesRun(["convert", model, "--dtype", "f16", "--max-shard-size", "50KB", "-o", dir + "/c"], output: dir + "/c", scratch: dir)
        _ = try checkPlanMatchesRun(["convert", "fixtures/peft/adapters/llama_lora", "--dtype", "bf16", "-o", dir + "/a"], output: dir + "/a", scratch: dir)
        _ = try checkPlanMatchesRun(["materialize", "fixtures/op/checkpoints/op_dora_f32", "--base", model, "-o", dir + "/m"], output: dir + "/m", scratch: dir)
        // One-file output.
        let single = dir + "/one.safetensors"
        let dry = try object(try runOpconvert(["convert", model, "--dtype", "bf16", "-o", single, "--dry-run", "--json"]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: single))
        XCTAssertEqual(try runOpconvert(["convert", model, "--dtype", "bf16", "-o", single]).status, 0)
        XCTAssertEqual((dry["files"] as? [[String: Any]])?.first?["bytes"] as? Int, try FileSystem.fileSize(single))
    }

    func testDryRunRefusesWhatTheRunRefuses() throws {
        let dir = cliScratch()
        let bad = try runOpconvert(["merge", model, "fixtures/peft/bad/missing_module", "-o", dir + "/x", "--dry-run"])
        XCTAssertEqual(bad.status, 65, bad.stderr)
        try FileManager.default.createDirectory(atPath: dir + "/exists", withIntermediateDirectories: true)
        let exists = try runOpconvert(["merge", model, "fixtures/peft/adapters/llama_lora", "-o", dir + "/exists", "--dry-run"])
        XCTAssertEqual(exists.status, 73, exists.stderr)
        let gguf = try runOpconvert(["convert", "fixtures/peft/adapters/llama_lora", "--to", "mlx", "-o", dir + "/g", "--dry-run"])
        XCTAssertEqual(gguf.status, 69, gguf.stderr)
        XCTAssertEqual(listing(dir), ["exists": listing(dir)["exists"]!])
    }

    func testTooLittleSpaceIsAnIOErrorNamingBothSizes() throws {
        let files = [PlannedFile(path: "/x/a", bytes: 700), PlannedFile(path: "/x/b", bytes: 300)]
        XCTAssertThrowsError(try OutputSpace.check(files, output: "/x", available: 999)) { e in
            let error = e as? OutputSpaceError
            XCTAssertEqual(error?.needed, 1000)
            XCTAssertEqual(error?.available, 999)
            XCTAssertEqual(error.map { ExitStatus($0.category) }, .ioError)
            XCTAssertTrue("\(e)".contains("needs 1.00 kB (1000 bytes)"), "\(e)")
        }
        XCTAssertNoThrow(try OutputSpace.check(files, output: "/x", available: 1000))
        XCTAssertNotNil(OutputSpace.available(for: cliScratch() + "/not/yet/made"), "asked of the nearest existing directory")
    }
}
