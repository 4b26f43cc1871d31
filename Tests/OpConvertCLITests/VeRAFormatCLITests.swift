import Foundation
import XCTest
import OpConvertKit

/// `opconvert merge / inspect / convert` on PEFT VeRA adapters (fixtures/vera), as scripts
/// see them: JSON summaries, the written files, one-line errors with sysexits codes.
final class VeRAFormatCLITests: XCTestCase {
    let base = "fixtures/peft/models/llama_f32"
    let saved = "fixtures/vera/adapters/vera_f32_saved"
    let seeded = "fixtures/vera/adapters/vera_f32_seeded"

    private func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    private func tensorBytes(_ path: String) throws -> [String: [UInt8]] {
        let store = try TensorStore.open(path)
        var out: [String: [UInt8]] = [:]
        for e in store.entries { out[e.info.name] = Array(store.data(e)) }
        return out
    }

    func testMergeReportsTheVeRAAdapterAndMatchesPEFT() throws {
        let out = cliScratch() + "/merged"
        let r = try runOpconvert(["merge", base, seeded, "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let summary = try json(r.stdout)
        let adapter = try XCTUnwrap((summary["adapters"] as? [[String: Any]])?.first)
        XCTAssertEqual(adapter["kind"] as? String, "peft-vera")
        XCTAssertEqual(adapter["modules"] as? Int, 8)
        XCTAssertEqual(summary["merged_tensors"] as? Int, 8)
        // Within MergeFixtureTests' tolerance of PEFT's merge_and_unload.
        let got = try tensorBytes(out), want = try tensorBytes("fixtures/vera/expected/vera_f32")
        XCTAssertEqual(Set(got.keys), Set(want.keys))
        var differing = 0
        for (name, w) in want {
            let g = try XCTUnwrap(got[name], name)
            if g != w { differing += 1 }
            let ga = g.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let wb = w.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let tol = 8 * (wb.map { abs($0) }.max() ?? 0).ulp
            XCTAssertTrue(zip(ga, wb).allSatisfy { abs($0 - $1) <= tol }, name)
        }
        XCTAssertLessThanOrEqual(differing, 8, "only the 8 adapted weights may differ from PEFT's bytes")
    }

    func testInspectJSONListsModulesAndProjections() throws {
        let r = try runOpconvert(["inspect", seeded, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let report = try json(r.stdout)
        XCTAssertEqual(report["kind"] as? String, "peft-vera-adapter")
        let modules = try XCTUnwrap(report["modules"] as? [[String: Any]])
        XCTAssertEqual(modules.count, 8)
        XCTAssertTrue(modules.contains { $0["name"] as? String == "model.layers.0.mlp.down_proj" && $0["rank"] as? Int == 8 })
        let details = try XCTUnwrap(report["details"] as? [String: Any])
        XCTAssertEqual(details["peft_type"] as? String, "VERA")
        XCTAssertEqual(details["save_projection"] as? Bool, false)
        XCTAssertEqual((report["tensors"] as? [Any])?.count, 16, "8 modules x (lambda_b, lambda_d), no projections")

        let savedReport = try json(try runOpconvert(["inspect", saved, "--json"]).stdout)
        XCTAssertEqual((savedReport["tensors"] as? [Any])?.count, 18, "plus vera_A and vera_B")
        XCTAssertEqual((savedReport["details"] as? [String: Any])?["vera_B"] as? String, "[128, 8] F32")
    }

    func testConvertToPEFTThenMergeGivesTheVeRAMergeBitForBit() throws {
        let dir = cliScratch()
        let r = try runOpconvert(["convert", saved, "-o", dir + "/lora", "--to", "peft", "--base", base, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(Set((try json(r.stdout)["files"] as? [String] ?? []).map { FileSystem.split($0).name }), ["adapter_model.safetensors", "adapter_config.json"])
        let config = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/lora/adapter_config.json")), as: UTF8.self))
        XCTAssertEqual(config["peft_type"] as? String, "LORA")
        XCTAssertEqual(config["r"] as? Int, 8)
        XCTAssertEqual(config["lora_alpha"] as? Int, 8)
        // PEFT's own f32 products (the fixture script checked PEFT merges them to its VeRA merge's bits).
        XCTAssertEqual(try tensorBytes(dir + "/lora/adapter_model.safetensors"),
                       try tensorBytes("fixtures/vera/expected/vera_f32_lora/adapter_model.safetensors"))
        for (name, adapter) in [("vera", seeded), ("lora", dir + "/lora")] {
            let m = try runOpconvert(["merge", base, adapter, "-o", dir + "/merged_" + name])
            XCTAssertEqual(m.status, 0, m.stderr)
        }
        XCTAssertEqual(try tensorBytes(dir + "/merged_lora"), try tensorBytes(dir + "/merged_vera"))
    }

    func testBadInputsGetOneLineErrorsWithExitCodes() throws {
        let dir = cliScratch()
        let cases: [([String], Int32, String)] = [
            (["merge", base, "fixtures/vera/bad/missing_vera_A", "-o", dir + "/a"], 65, "has no base_model.vera_A"),
            (["merge", base, "fixtures/vera/bad/wrong_lambda_d", "-o", dir + "/b"], 65, "vera_lambda_d has 7 values, but r = 8"),
            (["merge", base, "fixtures/vera/bad/wrong_lambda_b", "-o", dir + "/c"], 65, "model.layers.1.mlp.up_proj: vera_lambda_b has 129 values"),
            (["inspect", "fixtures/vera/bad/wrong_lambda_d"], 65, "model.layers.0.self_attn.q_proj"),
            (["convert", saved, "-o", dir + "/d", "--to", "peft"], 64, "--base"),
            (["convert", saved, "-o", dir + "/e", "--base", base], 69, "cannot convert to vera"),
        ]
        for (args, status, phrase) in cases {
            let r = try runOpconvert(args)
            let line = args.joined(separator: " ")
            XCTAssertEqual(r.status, status, "\(line): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(line): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: "), r.stderr)
            XCTAssertTrue(r.stderr.contains(phrase), "\(line): \(r.stderr)")
        }
        // Nothing was written for the refused runs.
        XCTAssertEqual(try FileSystem.list(dir), [])
    }
}
