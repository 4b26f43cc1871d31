import Foundation
import XCTest

/// `opconvert` with GGUF LoRA adapters: convert --to gguf / peft, merge, inspect, and the
/// errors (one line each, with the exit code of its category).
final class GGUFFormatCLITests: XCTestCase {
    func bytes(_ path: String) -> [UInt8] {
        [UInt8](FileManager.default.contents(atPath: path.hasPrefix("/") ? path : CLITests.repoRoot + "/" + path) ?? Data())
    }

    func oneLineError(_ r: CLIRun, _ status: Int32, _ phrase: String, line: UInt = #line) {
        XCTAssertEqual(r.status, status, r.stderr, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: "), r.stderr, line: line)
        XCTAssertTrue(r.stderr.contains(phrase), r.stderr, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, line: line)
        XCTAssertFalse(r.killedBySignal, line: line)
    }

    func testConvertToGGUFEqualsTheReferenceAndBack() throws {
        let dir = cliScratch()
        let r = try runOpconvert(["convert", "fixtures/gguf/peft/llama_gqa_lora", "-o", dir + "/a.gguf", "--to", "gguf",
                                  "--base", "fixtures/llama/models/llama"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(bytes(dir + "/a.gguf"), bytes("fixtures/gguf/reference/llama_gqa_lora_f32.gguf"))
        let h = try runOpconvert(["convert", "fixtures/peft/adapters/llama_lora", "-o", dir + "/h.gguf", "--to", "gguf",
                                  "--base", "fixtures/peft/models/llama_f32", "--dtype", "bf16"])
        XCTAssertEqual(h.status, 0, h.stderr)
        XCTAssertEqual(bytes(dir + "/h.gguf"), bytes("fixtures/gguf/reference/llama_lora_bf16.gguf"))
        // Back to PEFT: the same f32 tensors as the source adapter.
        let b = try runOpconvert(["convert", dir + "/a.gguf", "-o", dir + "/back", "--to", "peft", "--base", "fixtures/llama/models/llama"])
        XCTAssertEqual(b.status, 0, b.stderr)
        let original = bytes("fixtures/gguf/peft/llama_gqa_lora/adapter_model.safetensors")
        XCTAssertEqual(bytes(dir + "/back/adapter_model.safetensors").count, original.count)
        // Existing output without --overwrite: 73, the file untouched.
        let again = try runOpconvert(["convert", "fixtures/gguf/peft/llama_gqa_lora", "-o", dir + "/a.gguf", "--to", "gguf",
                                      "--base", "fixtures/llama/models/llama"])
        oneLineError(again, 73, "a.gguf")
    }

    func testMergeOfGGUFEqualsMergeOfPEFT() throws {
        let dir = cliScratch()
        let g = try runOpconvert(["merge", "fixtures/llama/models/llama", "fixtures/gguf/reference/llama_gqa_lora_f32.gguf", "-o", dir + "/g"])
        XCTAssertEqual(g.status, 0, g.stderr)
        let p = try runOpconvert(["merge", "fixtures/llama/models/llama", "fixtures/gguf/peft/llama_gqa_lora", "-o", dir + "/p"])
        XCTAssertEqual(p.status, 0, p.stderr)
        let a = bytes(dir + "/g/model.safetensors"), b = bytes(dir + "/p/model.safetensors")
        XCTAssertFalse(a.isEmpty)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, bytes("fixtures/llama/models/llama/model.safetensors"))
    }

    func testInspectJSONListsMetadataTensorsAndModules() throws {
        let r = try runOpconvert(["inspect", "fixtures/gguf/reference/llama_lora_f16.gguf", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["kind"] as? String, "gguf-adapter")
        let details = try XCTUnwrap(json["details"] as? [String: Any])
        XCTAssertEqual(details["adapter.lora.alpha"] as? Double, 16)
        XCTAssertEqual(details["general.type"] as? String, "adapter")
        XCTAssertEqual(details["gguf.tensor_types"] as? String, "F16: 28")
        let tensors = try XCTUnwrap(json["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 28)
        let qa = try XCTUnwrap(tensors.first { $0["name"] as? String == "blk.0.attn_q.weight.lora_a" })
        XCTAssertEqual(qa["shape"] as? [Int], [8, 64])
        XCTAssertEqual(qa["dtype"] as? String, "F16")
        let modules = try XCTUnwrap(json["modules"] as? [[String: Any]])
        XCTAssertEqual(modules.count, 14)
        XCTAssertTrue(modules.contains { $0["name"] as? String == "model.layers.1.mlp.down_proj" && $0["rank"] as? Int == 8 })
        // Quantized tensors are listed, not decoded.
        let q = try runOpconvert(["inspect", "fixtures/gguf/bad/q8_0_lora.gguf"])
        XCTAssertEqual(q.status, 0, q.stderr)
        XCTAssertTrue(q.stdout.contains("Q8_0"), q.stdout)
    }

    func testErrors() throws {
        let dir = cliScratch()
        let truncated = dir + "/truncated.gguf"
        FileManager.default.createFile(atPath: truncated, contents: Data(bytes("fixtures/gguf/reference/llama_lora_f32.gguf").prefix(5000)))
        oneLineError(try runOpconvert(["merge", "fixtures/peft/models/llama_f32", truncated, "-o", dir + "/m"]), 65, "truncated")
        oneLineError(try runOpconvert(["inspect", truncated]), 65, "malformed GGUF")
        var flipped = bytes("fixtures/gguf/reference/llama_lora_f32.gguf")
        flipped[15] = 0x7f  // the tensor count's top byte
        FileManager.default.createFile(atPath: dir + "/flipped.gguf", contents: Data(flipped))
        oneLineError(try runOpconvert(["convert", dir + "/flipped.gguf", "-o", dir + "/c", "--to", "peft", "--base", "fixtures/peft/models/llama_f32"]), 65, "tensor count")
        oneLineError(try runOpconvert(["merge", "fixtures/llama/models/llama", "fixtures/gguf/bad/q8_0_lora.gguf", "-o", dir + "/m"]), 69, "Q8_0")
        oneLineError(try runOpconvert(["merge", "fixtures/llama/models/llama", "fixtures/gguf/bad/model.gguf", "-o", dir + "/m"]), 69, "a GGUF model, not an adapter")
        oneLineError(try runOpconvert(["convert", "fixtures/gguf/reference/llama_lora_f32.gguf", "-o", dir + "/c", "--to", "peft"]), 69, "--base")
        oneLineError(try runOpconvert(["convert", "fixtures/peft/adapters/llama_lora", "-o", dir + "/c.gguf", "--to", "gguf"]), 69, "--base")
        oneLineError(try runOpconvert(["convert", "fixtures/peft/adapters/llama_dora", "-o", dir + "/c.gguf", "--to", "gguf",
                                       "--base", "fixtures/peft/models/llama_f32"]), 69, "DoRA")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/c.gguf"))
    }

    func testInspectVerifyReadsGGUFTensors() throws {
        let r = try runOpconvert(["inspect", "fixtures/gguf/reference/llama_lora_f32.gguf", "--verify", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let details = try XCTUnwrap(json["details"] as? [String: Any])
        XCTAssertTrue((details["verified"] as? String)?.hasPrefix("28 tensors") ?? false, "\(details)")
        XCTAssertTrue((details["verified"] as? String)?.hasSuffix(", 0 NaN/Inf values") ?? false, "\(details)")
        // A NaN in a lora_b: reported, exit 65.
        let dir = cliScratch()
        var b = bytes("fixtures/gguf/bad/q8_0_lora.gguf")
        let nan = Float.nan.bitPattern
        for k in 0..<4 { b[b.count - 4 + k] = UInt8(truncatingIfNeeded: nan >> (8 * k)) }
        FileManager.default.createFile(atPath: dir + "/nan.gguf", contents: Data(b))
        let v = try runOpconvert(["inspect", dir + "/nan.gguf", "--verify"])
        XCTAssertEqual(v.status, 65, v.stderr)
        XCTAssertTrue(v.stderr.contains("NaN"), v.stderr)
    }
}
