import Foundation
import XCTest
@testable import OpConvertKit

/// The one --json contract: every command's actual output validates against
/// docs/schema/opconvert-result.schema.json, is one line, and carries ok, command, version,
/// warnings and non_finite_numbers; values are typed and paths absolute.
final class JSONContractCLITests: XCTestCase {
    let model = "fixtures/peft/models/llama_f32"
    lazy var schema: JSONSchemaSubset = try! JSONSchemaSubset(path: CLITests.repoRoot + "/docs/schema/opconvert-result.schema.json")

    /// Runs the command and checks its stdout against the schema and the contract's
    /// fixed points; returns the parsed object.
    @discardableResult
    func checked(_ args: [String], status: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) throws -> JSONValue {
        let r = try runOpconvert(args)
        XCTAssertEqual(r.status, status, "\(args): \(r.stderr)", file: file, line: line)
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, 2, "one compact line and its newline: \(args)", file: file, line: line)
        let value = try JSONParser.parse(String(lines.first ?? ""))
        let problems = schema.errors(value)
        XCTAssertEqual(problems, [], "\(args)", file: file, line: line)
        XCTAssertEqual(value["ok"]?.boolValue, status == 0, "\(args)", file: file, line: line)
        XCTAssertEqual(value["version"]?.stringValue, OpConvertVersion.string, file: file, line: line)
        XCTAssertNotNil(value["warnings"]?.arrayValue, file: file, line: line)
        if status != 0 { XCTAssertEqual(value["exit_code"]?.intValue, Int(status), "\(args)", file: file, line: line) }
        return value
    }

    func testTheSchemaIsValidJSONWithEveryCommand() throws {
        let defs = try XCTUnwrap(schema.root["$defs"]?.objectValue).map(\.0)
        for name in ["error", "merge", "mergePlan", "convert", "convertPlan", "materialize", "materializePlan", "inspect", "pluginList",
                     "pluginCheck", "pluginBench", "train", "trainModel", "lrSweep", "factorize"] {
            XCTAssertTrue(defs.contains(name), name)
        }
        // The validator does reject: a string where the schema says integer, a missing key, an extra key.
        let merge = try JSONParser.parse(#"{"ok":true,"command":"merge","version":"x","warnings":[],"non_finite_numbers":{},"base":"/b","output":"/o","adapters":[],"tensors":"29","merged_tensors":1,"copied_tensors":1,"output_bytes":1,"files":["rel"],"seconds":0.1,"extra":1}"#)
        let problems = schema.errors(merge).joined(separator: "\n")
        XCTAssertTrue(problems.contains("/tensors"), problems)
        XCTAssertTrue(problems.contains("unexpected key extra"), problems)
        XCTAssertTrue(problems.contains("does not match ^/"), problems)
    }

    func testMergeConvertMaterializeAndTheirPlans() throws {
        let dir = cliScratch()
        let merged = try checked(["merge", model, "fixtures/peft/adapters/llama_lora", "-o", dir + "/m", "--json"])
        XCTAssertEqual(merged["command"]?.stringValue, "merge")
        XCTAssertEqual(merged["base"]?.stringValue, CLITests.repoRoot + "/" + model, "paths are absolute")
        XCTAssertEqual(merged["files"]?.arrayValue?.first?.stringValue, dir + "/m/model.safetensors")
        XCTAssertEqual(merged["adapters"]?.arrayValue?.first?["weight"], .int(1), "a number, not a string")
        try checked(["merge", model, "fixtures/peft/adapters/llama_dora", "-o", dir + "/p", "--json", "--dry-run"])
        try checked(["convert", model, "-o", dir + "/c", "--dtype", "f16", "--json"])
        try checked(["convert", model, "-o", dir + "/c1.safetensors", "--json", "--dry-run"])
        try checked(["convert", "fixtures/peft/adapters/llama_lora", "-o", dir + "/ca", "--dtype", "bf16", "--json"])
        let ckpt = "fixtures/op/checkpoints/op_lora_f32"
        let mat = try checked(["materialize", ckpt, "--base", model, "-o", dir + "/mat", "--json"])
        XCTAssertEqual(mat["dora"], .bool(false))
        try checked(["materialize", ckpt, "--base", model, "-o", dir + "/mat2", "--json", "--dry-run"])
    }

    func testInspectOnEveryInputKindHasTheSameKeys() throws {
        let inputs = [model, model + "/model.safetensors", "fixtures/peft/adapters/llama_lora", "fixtures/peft/adapters/llama_dora",
                      "fixtures/op/checkpoints/op_lora_f32", "fixtures/op/checkpoints/op_dora_f32", "fixtures/gguf/llama_cpp/llama_lora_f32.gguf",
                      "fixtures/mlx/adapters/llama_lora", "fixtures/vera/adapters/vera_f32_seeded", "fixtures/safetensors/valid/empty.safetensors"]
        var keySets: Set<[String]> = []
        for input in inputs {
            let v = try checked(["inspect", input, "--json"])
            keySets.insert(try XCTUnwrap(v.objectValue).map(\.0).sorted())
            XCTAssertEqual(v["path"]?.stringValue, CLITests.repoRoot + "/" + input)
        }
        XCTAssertEqual(keySets.count, 1, "the same keys for every input kind: \(keySets)")
        // Details are typed: booleans and numbers, never "false" or "16.0".
        let vera = try checked(["inspect", "fixtures/vera/adapters/vera_f32_seeded", "--json"])
        XCTAssertEqual(vera["details"]?["save_projection"], .bool(false))
        let peft = try checked(["inspect", "fixtures/peft/adapters/llama_lora", "--json"])
        XCTAssertEqual(peft["details"]?["r"], .int(8))
        XCTAssertEqual(peft["details"]?["lora_alpha"]?.doubleValue, 16)
        XCTAssertEqual(peft["modules"]?.arrayValue?.first?["train_parameters"], .null, "present as null, not absent")
        let gguf = try checked(["inspect", "fixtures/gguf/llama_cpp/llama_lora_f32.gguf", "--json"])
        XCTAssertEqual(gguf["details"]?["adapter.lora.alpha"]?.doubleValue, 16)
        XCTAssertEqual(gguf["details"]?["general.type"], .string("adapter"))
    }

    func testPluginAndTrainResults() throws {
        try checked(["plugin", "list", "--json"])
        let f = try checked(["train", "factorize", "--random", "12x10", "--rank", "2", "--steps", "20", "--json"])
        XCTAssertEqual(f["command"]?.stringValue, "train factorize")
        let dir = cliScratch()
        var rng = SeededRandom(seed: 5)
        try SafetensorsWriter.write(path: dir + "/net.safetensors", tensors: [
            (TensorSpec(name: "l0.weight", dtype: .f32, shape: [4, 6]), (0..<24).map { _ in rng.normal() * 0.5 }.contractBytes),
            (TensorSpec(name: "l1.weight", dtype: .f32, shape: [3, 4]), (0..<12).map { _ in rng.normal() * 0.5 }.contractBytes),
        ], metadata: nil)
        try SafetensorsWriter.write(path: dir + "/data.safetensors", tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [20, 6]), (0..<120).map { _ in rng.normal() }.contractBytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [20]), (0..<20).map { Int64($0 % 3) }.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        let t = try checked(["train", "--base", dir + "/net.safetensors", "--data", dir + "/data.safetensors", "--method", "lora",
                             "--rank", "2", "--device", "cpu", "-o", dir + "/adapter", "--json"])
        XCTAssertEqual(t["command"]?.stringValue, "train finetune")
        XCTAssertEqual(t["output"]?.stringValue, dir + "/adapter")
    }

    func testNonFiniteNumbersAreNullAndNamed() throws {
        // A learning rate far too high: the runs diverge and report infinite errors.
        let f = try checked(["train", "factorize", "--random", "12x10", "--rank", "2", "--steps", "30", "--lr", "1e4", "--json"])
        XCTAssertEqual(f["runs"]?.arrayValue?.first?["final_error"], .null)
        XCTAssertEqual(f["non_finite_numbers"]?["/runs/0/final_error"]?.stringValue, "Infinity")
        XCTAssertEqual(f["runs"]?.arrayValue?.first?["diverged"], .bool(true))
    }

    func testErrorsAndUsageErrorsKeepTheContract() throws {
        let dir = cliScratch()
        let missing = try checked(["inspect", dir + "/none.safetensors", "--json"], status: 66)
        XCTAssertEqual(missing["category"]?.stringValue, "missing_input")
        XCTAssertEqual(missing["command"]?.stringValue, "inspect")
        let parse = try checked(["merge", "--json", "--no-such-flag"], status: 64)
        XCTAssertEqual(parse["category"]?.stringValue, "usage")
        let validation = try checked(["merge", model, "fixtures/peft/adapters/llama_lora", "--weight", "1", "--weight", "2", "-o", dir + "/x", "--json"], status: 64)
        XCTAssertEqual(validation["command"]?.stringValue, "merge")
        let device = try checked(["plugin", "check", "--device", "tpu", "--json"], status: 64)
        XCTAssertEqual(device["command"]?.stringValue, "plugin check")
        try checked(["merge", model, "fixtures/peft/adapters/llama_lora", "-o", dir + "/m", "--json"])
        let exists = try checked(["merge", model, "fixtures/peft/adapters/llama_lora", "-o", dir + "/m", "--json"], status: 73)
        XCTAssertEqual(exists["category"]?.stringValue, "output_conflict")
    }
}

private extension Array where Element == Float {
    var contractBytes: [UInt8] { withUnsafeBytes { [UInt8]($0) } }
}
