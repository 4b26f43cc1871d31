import Foundation
import XCTest
@testable import OpConvertKit

/// FLUX/SD3-style pipelines: the denoiser is a `transformer/` component, and LoRA files name
/// it `transformer.` (diffusers) or `lora_transformer_` (kohya). The same factors in both
/// forms must change the same tensor to the same, nearest, values.
final class SDTransformerComponentTests: XCTestCase {
    static let toQ = "transformer_blocks.0.attn.to_q.weight"
    static let proj = "single_transformer_blocks.0.proj_out.weight"
    static let untouched = "transformer_blocks.0.ff.net.0.proj.weight"

    private func pipeline(_ dir: String) throws -> String {
        let root = dir + "/flux"
        try FileManager.default.createDirectory(atPath: root + "/transformer", withIntermediateDirectories: true)
        try Data(#"{"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}"#.utf8)
            .write(to: URL(fileURLWithPath: root + "/model_index.json"))
        try Data(#"{"_class_name": "FluxTransformer2DModel"}"#.utf8).write(to: URL(fileURLWithPath: root + "/transformer/config.json"))
        try writeSDTensors(root + "/transformer/diffusion_pytorch_model.safetensors", [
            SDTestTensor(name: Self.toQ, shape: [4, 4], values: sdValues(16, seed: 1)),
            SDTestTensor(name: Self.proj, shape: [4, 8], values: sdValues(32, seed: 2)),
            SDTestTensor(name: Self.untouched, shape: [8, 4], values: sdValues(32, seed: 3)),
        ])
        return root
    }

    // Factors: A [2, in], B [out, 2] for each module.
    let qA = sdValues(8, seed: 4), qB = sdValues(8, seed: 5), pA = sdValues(16, seed: 6), pB = sdValues(8, seed: 7)

    func testDiffusersAndKohyaTransformerLoRAMergeAlike() throws {
        let dir = TestPaths.scratch(self)
        let base = try pipeline(dir)
        let diffusers = dir + "/pytorch_lora_weights.safetensors"
        try writeSDTensors(diffusers, [
            SDTestTensor(name: "transformer.\(Self.toQ.dropLast(7)).lora_A.weight", shape: [2, 4], values: qA),
            SDTestTensor(name: "transformer.\(Self.toQ.dropLast(7)).lora_B.weight", shape: [4, 2], values: qB),
            SDTestTensor(name: "transformer.\(Self.proj.dropLast(7)).lora_A.weight", shape: [2, 8], values: pA),
            SDTestTensor(name: "transformer.\(Self.proj.dropLast(7)).lora_B.weight", shape: [4, 2], values: pB),
        ])
        // kohya: alpha 1 on rank 2 (scale 0.5), so the diffusers file gets weight 0.5 to match.
        let kohya = dir + "/kohya.safetensors"
        let q = "lora_transformer_transformer_blocks_0_attn_to_q", p = "lora_transformer_single_transformer_blocks_0_proj_out"
        try writeSDTensors(kohya, [
            SDTestTensor(name: "\(q).lora_down.weight", shape: [2, 4], values: qA),
            SDTestTensor(name: "\(q).lora_up.weight", shape: [4, 2], values: qB),
            SDTestTensor(name: "\(q).alpha", shape: [], values: [1]),
            SDTestTensor(name: "\(p).lora_down.weight", shape: [2, 8], values: pA),
            SDTestTensor(name: "\(p).lora_up.weight", shape: [4, 2], values: pB),
            SDTestTensor(name: "\(p).alpha", shape: [], values: [1]),
        ])
        let outD = dir + "/merged-diffusers", outK = dir + "/merged-kohya"
        _ = try Merger.run(MergeOptions(base: base, adapters: [(diffusers, 0.5)], output: outD, showProgress: false))
        _ = try Merger.run(MergeOptions(base: base, adapters: [(kohya, 1)], output: outK, showProgress: false))
        let original = try TensorStore.open(base), d = try TensorStore.open(outD), k = try TensorStore.open(outK)
        func values(_ s: TensorStore, _ name: String) throws -> [Float] {
            try TensorData.stored(s, try XCTUnwrap(s.entry(named: "transformer/" + name), name)).floats()
        }
        for (name, a, b, inner) in [(Self.toQ, qA, qB, 4), (Self.proj, pA, pB, 8)] {
            let w = try values(original, name)
            // W + 0.5·B·A in f64, rounded once: the terms are multiples of 1/256, so exact.
            var want = [Float](repeating: 0, count: 4 * inner)
            for o in 0..<4 { for j in 0..<inner {
                var s = 0.0
                for r in 0..<2 { s += Double(b[o * 2 + r]) * Double(a[r * inner + j]) }
                want[o * inner + j] = Float(Double(w[o * inner + j]) + 0.5 * s)
            } }
            XCTAssertEqual(try values(d, name), want, "diffusers \(name)")
            XCTAssertEqual(try values(k, name), want, "kohya \(name)")
        }
        XCTAssertEqual(try values(d, Self.untouched), try values(original, Self.untouched))
        XCTAssertTrue(FileSystem.exists(outD + "/model_index.json"))
        XCTAssertTrue(FileSystem.exists(outK + "/transformer/config.json"))
        // kohya <-> diffusers conversion of the transformer file is exact too.
        let converted = dir + "/converted"
        var options = ConvertOptions(input: kohya, output: converted)
        options.to = .diffusers
        options.base = base
        _ = try Converter.run(options)
        let keys = try TensorStore.open(converted + "/pytorch_lora_weights.safetensors").entries.map(\.info.name)
        XCTAssertTrue(keys.allSatisfy { $0.hasPrefix("transformer.") }, "\(keys)")
        let outC = dir + "/merged-converted"
        _ = try Merger.run(MergeOptions(base: base, adapters: [(converted, 1)], output: outC, showProgress: false))
        let c = try TensorStore.open(outC)
        XCTAssertEqual(try values(c, Self.toQ), try values(k, Self.toQ))
        XCTAssertEqual(try values(c, Self.proj), try values(k, Self.proj))
    }
}
