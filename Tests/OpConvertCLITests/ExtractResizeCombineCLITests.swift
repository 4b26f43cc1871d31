import Foundation
import XCTest

final class ExtractResizeCombineCLITests: XCTestCase {
    let base = "fixtures/peft/models/llama"

    func json(_ run: CLIRun) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
    }

    func testExtractJSONReportsModules() throws {
        let out = cliScratch() + "/adapter"
        let run = try runOpconvert(["extract", base, "fixtures/extract/tuned_lowrank", "-o", out, "--rank", "4", "--json"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let j = try json(run)
        let modules = try XCTUnwrap(j["modules"] as? [[String: Any]])
        XCTAssertEqual(modules.count, 13)
        XCTAssertTrue(modules.allSatisfy { ($0["relative_error"] as? Double ?? 1) < 1e-6 && $0["rank"] as? Int == 4 })
        XCTAssertEqual(j["method"] as? String, "randomized")
        XCTAssertNotNil(j["warnings"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/adapter_config.json"))
        // The extracted adapter merges with opconvert.
        let merged = cliScratch() + "/merged"
        XCTAssertEqual(try runOpconvert(["merge", base, out, "-o", merged]).status, 0)
    }

    func testUsageErrors() throws {
        let dir = cliScratch()
        for args in [["extract", base, "fixtures/extract/tuned_lowrank", "-o", dir + "/a"],
                     ["extract", base, "fixtures/extract/tuned_lowrank", "-o", dir + "/a", "--rank", "2", "--energy", "0.5"],
                     ["extract", base, "fixtures/extract/tuned_lowrank", "-o", dir + "/a", "--energy", "2"],
                     ["resize", "fixtures/peft/adapters/llama_lora", "-o", dir + "/b"],
                     ["combine", "fixtures/peft/adapters/llama_lora", "--method", "svd", "-o", dir + "/c"],
                     ["combine", "fixtures/peft/adapters/llama_lora", "fixtures/peft/adapters/llama_lora_b", "--weight", "1", "-o", dir + "/c"],
                     ["verify", base, "fixtures/peft/adapters/llama_lora"]] {
            let run = try runOpconvert(args)
            XCTAssertEqual(run.status, 64, "\(args): \(run.stderr)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testInputAndOutputErrors() throws {
        let dir = cliScratch()
        let missing = try runOpconvert(["extract", "fixtures/nope", "fixtures/extract/tuned_lowrank", "-o", dir + "/a", "--rank", "2"])
        XCTAssertEqual(missing.status, 66, missing.stderr)
        XCTAssertTrue(missing.stderr.contains("fixtures/nope"))
        let exists = try runOpconvert(["extract", base, "fixtures/extract/tuned_lowrank", "-o", dir, "--rank", "2"])
        XCTAssertEqual(exists.status, 73, exists.stderr)
        let dora = try runOpconvert(["resize", "fixtures/peft/adapters/llama_dora", "-o", dir + "/r", "--rank", "2"])
        XCTAssertEqual(dora.status, 69, dora.stderr)
        XCTAssertTrue(dora.stderr.contains("DoRA"))
        let dataError = try runOpconvert(["extract", base, "fixtures/extract/tuned_lowrank", "-o", dir + "/t", "--rank", "2",
                                          "--target-modules", "nothing_here", "--json"])
        XCTAssertEqual(dataError.status, 65, dataError.stderr)
        XCTAssertEqual(try json(dataError)["exit_code"] as? Int, 65)
    }

    func testResizeAndCombineCommands() throws {
        let dir = cliScratch()
        let resize = try runOpconvert(["resize", "fixtures/peft/adapters/llama_lora", "-o", dir + "/r", "--energy", "0.8", "--json"])
        XCTAssertEqual(resize.status, 0, resize.stderr)
        let modules = try XCTUnwrap(try json(resize)["modules"] as? [[String: Any]])
        XCTAssertTrue(modules.allSatisfy { ($0["retained_energy"] as? Double ?? 0) >= 0.8 && ($0["rank"] as? Int ?? 9) <= 8 })
        let combine = try runOpconvert(["combine", "fixtures/peft/adapters/llama_lora", "fixtures/peft/adapters/llama_lora_b",
                                        "--weight", "1", "--weight", "0.5", "-o", dir + "/c"])
        XCTAssertEqual(combine.status, 0, combine.stderr)
        XCTAssertTrue(combine.stdout.contains("14 modules"), combine.stdout)
    }

    func testVerifyExitCodes() throws {
        let dir = cliScratch()
        XCTAssertEqual(try runOpconvert(["merge", base, "fixtures/peft/adapters/llama_lora", "-o", dir + "/m"]).status, 0)
        let ok = try runOpconvert(["verify", base, "fixtures/peft/adapters/llama_lora", dir + "/m", "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(try json(ok)["ok"] as? Bool, true)
        // The wrong weight: every changed tensor is off, the first is named, exit 65.
        let bad = try runOpconvert(["verify", base, "fixtures/peft/adapters/llama_lora", dir + "/m", "--weight", "2"])
        XCTAssertEqual(bad.status, 65, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("outside one rounding") && bad.stderr.contains(".weight"), bad.stderr)
        let badJSON = try runOpconvert(["verify", base, "fixtures/peft/adapters/llama_lora", dir + "/m", "--weight", "2", "--json"])
        XCTAssertEqual(badJSON.status, 65)
        let j = try json(badJSON)
        XCTAssertEqual(j["ok"] as? Bool, false)
        XCTAssertEqual(j["exit_code"] as? Int, 65)
        XCTAssertNotNil(j["changed"] as? [[String: Any]])
    }
}
