import Foundation
import XCTest
@testable import OpConvertKit

/// `opconvert convert --to diffusers/kohya`, `inspect` and `merge` on diffusers LoRA files and
/// LyCORIS kohya files, with a tiny SD1.x single-file base made here.
final class DiffusersLoraCLITests: XCTestCase {
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    let te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"

    private func write(_ path: String, _ tensors: [(String, [Int], [Float])], metadata: [String: String]? = nil) throws {
        try SafetensorsWriter.write(path: path, tensors: tensors.map { name, shape, values in
            (TensorSpec(name: name, dtype: .f32, shape: shape), values.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } })
        }, metadata: metadata)
    }

    private func values(_ n: Int, _ seed: Int) -> [Float] { (0..<n).map { Float((($0 + 3) * 29 + seed * 7) % 17 - 8) / 8 } }

    private func base(_ dir: String) throws -> String {
        let path = dir + "/sd15.safetensors"
        try write(path, [
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", [4, 4], values(16, 1)),
            ("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", [4, 4], values(16, 2)),
        ])
        return path
    }

    private func kohya(_ path: String) throws {
        try write(path, [
            ("\(q).lora_down.weight", [2, 4], values(8, 3)), ("\(q).lora_up.weight", [4, 2], values(8, 4)), ("\(q).alpha", [], [1]),
            ("\(te).lora_down.weight", [2, 4], values(8, 5)), ("\(te).lora_up.weight", [4, 2], values(8, 6)), ("\(te).alpha", [], [4]),
        ])
    }

    private func tensors(_ path: String) throws -> [String: [UInt8]] {
        let s = try TensorStore.open(path)
        return Dictionary(uniqueKeysWithValues: s.entries.map { ($0.info.name, Array(s.data($0))) })
    }

    func testConvertKohyaToDiffusersAndBack() throws {
        let dir = cliScratch(), base = try base(dir), input = dir + "/kohya.safetensors"
        try kohya(input)
        let to = try runOpconvert(["convert", input, "-o", dir + "/lora.safetensors", "--to", "diffusers", "--base", base])
        XCTAssertEqual(to.status, 0, to.stderr)
        let file = try TensorStore.open(dir + "/lora.safetensors")
        XCTAssertNotNil(file.entry(named: "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"))
        XCTAssertNotNil(file.entry(named: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"))
        let meta = try XCTUnwrap(file.metadata?["lora_adapter_metadata"])
        let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(meta.utf8)) as? [String: Any])
        XCTAssertEqual(config["unet.lora_alpha"] as? Int, 1)
        XCTAssertEqual(config["text_encoder.lora_alpha"] as? Int, 4)
        XCTAssertEqual(config["unet.r"] as? Int, 2)

        let back = try runOpconvert(["convert", dir + "/lora.safetensors", "-o", dir + "/back.safetensors", "--to", "kohya", "--base", base])
        XCTAssertEqual(back.status, 0, back.stderr)
        XCTAssertEqual(try tensors(dir + "/back.safetensors"), try tensors(input))
    }

    func testInspectAndMergeADiffusersFile() throws {
        let dir = cliScratch(), base = try base(dir), input = dir + "/kohya.safetensors"
        try kohya(input)
        XCTAssertEqual(try runOpconvert(["convert", input, "-o", dir + "/lora", "--to", "diffusers", "--base", base]).status, 0)
        let inspect = try runOpconvert(["inspect", dir + "/lora", "--json"])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("diffusers-lora"), inspect.stdout)
        let merge = try runOpconvert(["merge", base, dir + "/lora", "-o", dir + "/merged.safetensors", "--json"])
        XCTAssertEqual(merge.status, 0, merge.stderr)
        XCTAssertTrue(merge.stdout.contains("\"diffusers-lora\""), merge.stdout)
        let kohyaMerge = try runOpconvert(["merge", base, input, "-o", dir + "/merged-kohya.safetensors"])
        XCTAssertEqual(kohyaMerge.status, 0, kohyaMerge.stderr)
        XCTAssertEqual(try tensors(dir + "/merged.safetensors"), try tensors(dir + "/merged-kohya.safetensors"))
    }

    func testLoHaToLoRAIsRefusedWithExit69() throws {
        let dir = cliScratch(), base = try base(dir), input = dir + "/loha.safetensors"
        try write(input, [
            ("\(q).hada_w1_a", [4, 1], values(4, 1)), ("\(q).hada_w1_b", [1, 4], values(4, 2)),
            ("\(q).hada_w2_a", [4, 1], values(4, 3)), ("\(q).hada_w2_b", [1, 4], values(4, 4)),
        ])
        for (to, out) in [("diffusers", dir + "/d"), ("kohya", dir + "/k.safetensors")] {
            let r = try runOpconvert(["convert", input, "-o", out, "--to", to, "--base", base])
            XCTAssertEqual(r.status, 69, r.stderr)
            XCTAssertTrue(r.stderr.contains("--rank") && r.stderr.contains("LoHa"), r.stderr)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        }
        // The LoHa itself merges.
        let merge = try runOpconvert(["merge", base, input, "-o", dir + "/merged.safetensors", "--json"])
        XCTAssertEqual(merge.status, 0, merge.stderr)
        XCTAssertTrue(merge.stdout.contains("\"lycoris\""), merge.stdout)
    }

    func testKohyaOutputMustBeOneSafetensorsFile() throws {
        let dir = cliScratch(), base = try base(dir), input = dir + "/kohya.safetensors"
        try kohya(input)
        XCTAssertEqual(try runOpconvert(["convert", input, "-o", dir + "/lora", "--to", "diffusers", "--base", base]).status, 0)
        let r = try runOpconvert(["convert", dir + "/lora", "-o", dir + "/kohya-dir", "--to", "kohya", "--base", base])
        XCTAssertEqual(r.status, 69, r.stderr)
        XCTAssertTrue(r.stderr.contains("*.safetensors"), r.stderr)
    }
}
