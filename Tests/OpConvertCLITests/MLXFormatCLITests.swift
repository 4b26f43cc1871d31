import Foundation
import XCTest

/// `opconvert merge / inspect / convert` on mlx-lm adapters (fixtures/mlx).
final class MLXFormatCLITests: XCTestCase {
    func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func testMergeReportsTheMLXKinds() throws {
        let dir = cliScratch()
        for (adapter, kind, modules) in [("llama_lora", "mlx-lora", 6), ("llama_dora", "mlx-dora", 7)] {
            let r = try runOpconvert(["merge", "fixtures/peft/models/llama_f32", "fixtures/mlx/adapters/" + adapter, "-o", dir + "/" + adapter, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let obj = try json(r.stdout)
            XCTAssertEqual(obj["merged_tensors"] as? Int, modules)
            let a = try XCTUnwrap((obj["adapters"] as? [[String: Any]])?.first)
            XCTAssertEqual(a["kind"] as? String, kind)
            XCTAssertEqual(a["modules"] as? Int, modules)
        }
        let full = try runOpconvert(["merge", "fixtures/peft/models/llama", "fixtures/mlx/adapters/llama_full", "-o", dir + "/full", "--json"])
        XCTAssertEqual(full.status, 0, full.stderr)
        let fullReport = try json(full.stdout)
        XCTAssertEqual(fullReport["merged_tensors"] as? Int, 13)
        XCTAssertEqual((fullReport["adapters"] as? [[String: Any]])?.first?["kind"] as? String, "mlx-full")
    }

    func testInspectJSON() throws {
        let r = try runOpconvert(["inspect", "fixtures/mlx/adapters/llama_lora", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try json(r.stdout)
        XCTAssertEqual(obj["kind"] as? String, "mlx-adapter")
        let details = try XCTUnwrap(obj["details"] as? [String: Any])
        XCTAssertEqual(details["fine_tune_type"] as? String, "lora")
        XCTAssertEqual(details["rank"] as? Int, 4)
        XCTAssertEqual(details["scale"] as? Double, 20)
        XCTAssertEqual(details["num_layers"] as? Int, 2)
        XCTAssertEqual(details["keys"] as? String, "self_attn.q_proj, self_attn.v_proj, mlp.down_proj")
        let modules = try XCTUnwrap(obj["modules"] as? [[String: Any]])
        XCTAssertEqual(modules.count, 6)
        // q_proj: lora_a [64, 4] + lora_b [4, 64].
        XCTAssertEqual(modules.first { $0["name"] as? String == "model.layers.0.self_attn.q_proj" }?["inference_parameters"] as? Int, 512)
        XCTAssertEqual((obj["files"] as? [[String: Any]])?.first?["name"] as? String, "adapters.safetensors")
    }

    func testConvertBothWays() throws {
        let dir = cliScratch()
        let toPEFT = try runOpconvert(["convert", "fixtures/mlx/adapters/llama_dora", "-o", dir + "/peft", "--to", "peft"])
        XCTAssertEqual(toPEFT.status, 0, toPEFT.stderr)
        let peftConfig = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/peft/adapter_config.json")), as: UTF8.self))
        XCTAssertEqual(peftConfig["use_dora"] as? Bool, true)
        XCTAssertEqual(peftConfig["r"] as? Int, 4)
        XCTAssertEqual(peftConfig["lora_alpha"] as? Int, 8)   // scale 2 · r 4

        let back = try runOpconvert(["convert", dir + "/peft", "-o", dir + "/mlx", "--to", "mlx", "--base", "fixtures/peft/models/llama_f32"])
        XCTAssertEqual(back.status, 0, back.stderr)
        let original = try Data(contentsOf: URL(fileURLWithPath: "fixtures/mlx/adapters/llama_dora/adapters.safetensors", relativeTo: URL(fileURLWithPath: CLITests.repoRoot)))
        let roundTrip = try Data(contentsOf: URL(fileURLWithPath: dir + "/mlx/adapters.safetensors"))
        XCTAssertFalse(roundTrip.isEmpty)
        // The tensors themselves are compared in MLXFormatTests; here: same size (same tensors, dtypes).
        XCTAssertEqual(original.count - headerLength(original), roundTrip.count - headerLength(roundTrip))
        let config = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/mlx/adapter_config.json")), as: UTF8.self))
        XCTAssertEqual(config["fine_tune_type"] as? String, "dora")
        XCTAssertEqual(config["num_layers"] as? Int, 1)
        XCTAssertEqual((config["lora_parameters"] as? [String: Any])?["scale"] as? Double, 2.0)

        // An existing output is refused (73), and the input is left alone.
        let again = try runOpconvert(["convert", dir + "/peft", "-o", dir + "/mlx", "--to", "mlx"])
        XCTAssertEqual(again.status, 73, again.stderr)
    }

    func headerLength(_ data: Data) -> Int {
        8 + Int(data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
    }

    func testErrorsAreOneLineWithExitCodes() throws {
        let dir = cliScratch()
        let cases: [([String], Int32, String)] = [
            (["merge", "fixtures/peft/models/llama_f32", "fixtures/mlx/bad/rank_mismatch", "-o", dir + "/a"], 65, "their ranks (4 and 3) differ"),
            (["merge", "fixtures/peft/models/llama_f32", "fixtures/mlx/bad/missing_config", "-o", dir + "/b"], 65, "no adapter_config.json next to adapters.safetensors"),
            (["inspect", "fixtures/mlx/bad/unknown_type"], 65, "fine_tune_type \"qlora\" is not one mlx-lm knows"),
            (["merge", "fixtures/mlx/models/llama_q4", "fixtures/mlx/adapters/llama_lora", "-o", dir + "/c"], 69, "the base is quantized by mlx-lm"),
            (["convert", "fixtures/mlx/adapters/llama_full", "-o", dir + "/d", "--to", "peft"], 69, "full-tensor changes (13)"),
            (["convert", "fixtures/peft/adapters/llama_rslora_patterns", "-o", dir + "/e", "--to", "mlx"], 69, "lora_parameters.rank is one for all modules"),
        ]
        for (args, status, says) in cases {
            let r = try runOpconvert(args)
            XCTAssertEqual(r.status, status, "\(args): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: "), r.stderr)
            XCTAssertTrue(r.stderr.contains(says), "\(args): \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/d"))
    }
}
