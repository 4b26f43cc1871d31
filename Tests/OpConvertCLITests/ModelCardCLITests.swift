import Foundation
import XCTest
@testable import OpConvertKit

/// Model directories that merge and convert write carry opconvert's own README.md (model
/// card): inputs, weights, version, no date; the base's card is replaced, its license kept.
final class ModelCardCLITests: XCTestCase {
    let model = "fixtures/peft/models/llama_f32"
    let lora = "fixtures/peft/adapters/llama_lora"

    func card(_ dir: String) throws -> String {
        String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/README.md")), as: UTF8.self)
    }

    /// A copy of the base model with a card of its own.
    func baseWithCard(_ text: String) throws -> String {
        let base = cliScratch() + "/base"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + model, toPath: base)
        try Data(text.utf8).write(to: URL(fileURLWithPath: base + "/README.md"))
        return base
    }

    func testMergeCardRecordsInputsWeightsAndVersionReproducibly() throws {
        let dir = cliScratch()
        for out in ["a", "b"] {
            let r = try runOpconvert(["merge", model, lora + ":0.5", "fixtures/peft/adapters/llama_dora", "-o", dir + "/" + out])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let text = try card(dir + "/a")
        XCTAssertEqual(text, try card(dir + "/b"), "same inputs, same bytes")
        XCTAssertTrue(text.hasPrefix("---\n"), text)
        XCTAssertTrue(text.contains("base_model_relation: merge\n"), text)
        XCTAssertTrue(text.contains("| base | \(model) |"), text)
        XCTAssertTrue(text.contains("| adapter 1 | \(lora) | peft-lora, 14 modules | "), text)
        XCTAssertTrue(text.contains(" | 0.5 |\n"), text)
        XCTAssertTrue(text.contains("| adapter 2 | fixtures/peft/adapters/llama_dora | peft-dora"), text)
        XCTAssertTrue(text.contains("opconvert version: \(OpConvertVersion.string)"), text)
        XCTAssertNil(text.range(of: #"20\d\d-\d\d-\d\d"#, options: .regularExpression), "no date")
    }

    func testTheBasesCardIsReplacedKeepingItsLicense() throws {
        let base = try baseWithCard("---\nlicense: apache-2.0\nbase_model: someone/original\ntags:\n- llama\n---\n\n# The base's own story\n")
        let out = cliScratch() + "/m"
        XCTAssertEqual(try runOpconvert(["merge", base, lora, "-o", out]).status, 0)
        let text = try card(out)
        XCTAssertTrue(text.contains("license: apache-2.0\n"), text)
        XCTAssertFalse(text.contains("The base's own story"), text)
        XCTAssertFalse(text.contains("someone/original"), "the base's base is not this model's base")

        let converted = cliScratch() + "/c"
        XCTAssertEqual(try runOpconvert(["convert", base, "--dtype", "bf16", "-o", converted]).status, 0)
        let c = try card(converted)
        XCTAssertTrue(c.contains("# Converted model"), c)
        XCTAssertTrue(c.contains("license: apache-2.0\n"), c)
        XCTAssertTrue(c.contains("base_model: someone/original\n"), "a cast keeps the lineage: \(c)")
        XCTAssertTrue(c.contains("- dtype: bf16"), c)
    }

    func testHubBasesAreNamedByTheirID() throws {
        let cache = cliScratch() + "/hub"
        let snapshot = cache + "/models--org--tiny/snapshots/abc123"
        try FileManager.default.createDirectory(atPath: cache + "/models--org--tiny/snapshots", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + model, toPath: snapshot)
        XCTAssertEqual(ModelCard.hubID(ofSnapshot: snapshot), "org/tiny")
        XCTAssertNil(ModelCard.hubID(ofSnapshot: CLITests.repoRoot + "/" + model))
        let out = cliScratch() + "/m"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = ["merge", "org/tiny", lora, "-o", out]
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        p.environment = ProcessInfo.processInfo.environment.merging(["HF_HUB_CACHE": cache]) { _, n in n }
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let text = try card(out)
        XCTAssertTrue(text.contains("base_model: org/tiny\n"), text)
        XCTAssertTrue(text.contains("| base | org/tiny |"), text)
    }

    func testPlansCountTheCardAndFilesGetNone() throws {
        let dir = cliScratch()
        let dry = try runOpconvert(["merge", model, lora, "-o", dir + "/m", "--dry-run", "--json"])
        let plan = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any])
        let readme = (plan["files"] as? [[String: Any]])?.first { ($0["path"] as? String)?.hasSuffix("/README.md") == true }
        XCTAssertEqual(try runOpconvert(["merge", model, lora, "-o", dir + "/m"]).status, 0)
        XCTAssertEqual(readme?["bytes"] as? Int, try FileSystem.fileSize(dir + "/m/README.md"))
        XCTAssertEqual(try runOpconvert(["merge", model, lora, "-o", dir + "/one.safetensors"]).status, 0)
        XCTAssertEqual(try FileSystem.list(dir).sorted(), ["m", "one.safetensors"], "a one-file output has no card beside it")
    }

    func testMaterializedAdaptersGetAnAdapterCard() throws {
        let dir = cliScratch()
        let args = ["materialize", "fixtures/op/checkpoints/op_dora_f32", "--base", model, "-o", dir + "/a"]
        let dry = try runOpconvert(args + ["--dry-run", "--json"])
        let plan = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any], dry.stderr)
        XCTAssertEqual(try runOpconvert(args).status, 0)
        let text = try card(dir + "/a")
        XCTAssertTrue(text.contains("base_model_relation: adapter\n"), text)
        XCTAssertTrue(text.contains("library_name: peft\n"), text)
        XCTAssertTrue(text.contains("# Materialized DoRA adapter"), text)
        XCTAssertTrue(text.contains("| checkpoint | fixtures/op/checkpoints/op_dora_f32 |"), text)
        let readme = (plan["files"] as? [[String: Any]])?.first { ($0["path"] as? String)?.hasSuffix("/README.md") == true }
        XCTAssertEqual(readme?["bytes"] as? Int, try FileSystem.fileSize(dir + "/a/README.md"))
    }
}
