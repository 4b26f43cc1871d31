import Foundation
import XCTest

/// `opconvert train --model DIR`: a run with its outputs, and the refusals with their exit codes.
final class TrainModelCLITests: XCTestCase {
    let llama = "fixtures/llama/models/llama"
    let data = "fixtures/llama/data/train.safetensors"
    let loraInit = "fixtures/llama/expected/lora_llama_qv/init"

    func train(_ args: [String]) throws -> CLIRun {
        try runOpconvert(["train", "--no-progress", "--device", "cpu", "--model", llama, "--data", data] + args)
    }

    func testRunWritesAPEFTAdapterALossCSVAndJSON() throws {
        let dir = cliScratch()
        let r = try train(["--method", "lora", "--rank", "4", "--alpha", "8", "--init", loraInit, "--lr", "1e-2", "--batch-size", "4",
                           "--steps", "3", "--no-shuffle", "--eval-data", "fixtures/llama/data/train.jsonl", "--eval-every", "2",
                           "--loss-csv", dir + "/loss.csv", "-o", dir + "/adapter", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let summary = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((summary["losses"] as! [Double]).count, 3)
        XCTAssertEqual((summary["eval_losses"] as! [[String: Any]]).map { $0["step"] as! Int }, [2, 3])
        XCTAssertGreaterThan(summary["tokens_per_second"] as! Double, 0)
        let csv = try String(contentsOfFile: dir + "/loss.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 4)
        XCTAssertTrue(csv[0].hasPrefix("step,lr,loss,eval_loss"))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/adapter/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(config["target_modules"] as? [String], ["q_proj", "v_proj"])
        XCTAssertEqual(config["r"] as? Int, 4)
        XCTAssertEqual(config["use_dora"] as? Bool, false)
        XCTAssertEqual(config["base_model_name_or_path"] as? String, llama)
        // merge folds it into the same model directory
        let m = try runOpconvert(["merge", llama, dir + "/adapter", "-o", dir + "/merged", "--no-progress"])
        XCTAssertEqual(m.status, 0, m.stderr)
    }

    func testRefusalsHaveTheirExitCodes() throws {
        let dir = cliScratch()
        let cases: [([String], Int32, String)] = [
            (["--target-modules", "q_proj,qkv"], 64, "qkv"),
            (["--base", "x.safetensors"], 64, "exclusive"),
            (["--steps", "0"], 64, "--steps"),
            (["--grad-accum", "0"], 64, "--grad-accum"),
            (["--max-grad-norm", "-1"], 64, "--max-grad-norm"),
            (["--method", "lora", "--rank", "2", "--init", loraInit], 65, "rank"),
            (["--method", "op-lora", "--rank", "4", "--init", loraInit], 65, "not an OP checkpoint"),
            (["--method", "lora", "--rank", "4", "--target-modules", "q_proj", "--init", loraInit], 65, "v_proj"),
            (["--data", dir + "/missing.safetensors"], 66, "missing.safetensors"),
        ]
        for (args, status, fragment) in cases {
            let r = try train(args)
            XCTAssertEqual(r.status, status, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(fragment), "\(args): \(r.stderr)")
        }
        // --model flags without --model
        let r = try runOpconvert(["train", "--base", "b.safetensors", "--data", "d.safetensors", "--steps", "3"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("--steps"), r.stderr)
        // a sliding window shorter than the rows: 69, naming the field
        let model = dir + "/mistral"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/fixtures/llama/models/mistral", toPath: model)
        let config = try String(contentsOfFile: model + "/config.json", encoding: .utf8)
        try config.replacingOccurrences(of: "\"sliding_window\": 32", with: "\"sliding_window\": 8")
            .write(toFile: model + "/config.json", atomically: true, encoding: .utf8)
        let w = try runOpconvert(["train", "--no-progress", "--device", "cpu", "--model", model, "--data", data])
        XCTAssertEqual(w.status, 69, w.stderr)
        XCTAssertTrue(w.stderr.contains("sliding_window"), w.stderr)
    }
}
