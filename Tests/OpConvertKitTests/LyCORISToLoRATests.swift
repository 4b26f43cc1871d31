import Foundation
import XCTest
@testable import OpConvertKit

/// `convert --to kohya|diffusers --rank R` on LyCORIS files: each full-delta module becomes a
/// LoRA by SVD; at a rank that holds the delta (a LoHa of rank r has ΔW of rank <= r²) the
/// LoRA merges to the same weights, up to the f32 rounding of its factors.
final class LyCORISToLoRATests: XCTestCase {
    let root = TestPaths.fixture("sd-lycoris")

    private func convert(_ input: String, to: AdapterFormatID, output: String, target: RankTarget?) throws {
        var o = ConvertOptions(input: input, output: output)
        o.to = to
        o.base = root + "/base.safetensors"
        o.lowRank = target
        _ = try Converter.run(o)
    }

    private func merged(_ adapter: String, _ out: String) throws -> TensorStore {
        _ = try Merger.run(MergeOptions(base: root + "/base.safetensors", adapters: [(adapter, 1)], output: out, showProgress: false))
        return try TensorStore.open(out)
    }

    func testLyCORISModulesBecomeLoRAsThatMergeAlike() throws {
        let dir = TestPaths.scratch(self)
        let base = try TensorStore.open(root + "/base.safetensors")
        // rank 4 holds a rank-2 LoHa (randomized SVD); --energy 1 keeps every singular value (exact SVD).
        for (name, target) in [("loha", RankTarget.rank(4)), ("loha", .energy(1)), ("lokr_tucker", .energy(1)), ("locon_tucker", .energy(1)),
                               ("lokr_whole", .energy(1))] {
            let label = "\(name)-\(target)"
            let lora = dir + "/\(label).safetensors"
            try convert(root + "/\(name).safetensors", to: .kohya, output: lora, target: target)
            let keys = try TensorStore.open(lora).entries.map(\.info.name)
            XCTAssertTrue(keys.allSatisfy { $0.hasSuffix(".lora_down.weight") || $0.hasSuffix(".lora_up.weight") || $0.hasSuffix(".alpha") }, "\(label): \(keys)")
            XCTAssertTrue([AdapterKind.kohyaLora, .kohyaLocon].contains(try AdapterRegistry.open(lora).kind), label)
            let want = try merged(root + "/\(name).safetensors", dir + "/\(label)-want.safetensors")
            let got = try merged(lora, dir + "/\(label)-got.safetensors")
            var changed = 0
            for e in want.entries {
                let w = try TensorData.stored(want, e).floats(), g = try TensorData.stored(got, try XCTUnwrap(got.entry(named: e.info.name))).floats()
                let b = try TensorData.stored(base, try XCTUnwrap(base.entry(named: e.info.name))).floats()
                guard w != b else { XCTAssertEqual(g, b, "\(label): \(e.info.name) untouched"); continue }
                changed += 1
                let scale = w.map { abs($0) }.max() ?? 1
                for i in w.indices where abs(w[i] - g[i]) > 64 * scale.ulp {
                    XCTFail("\(label): \(e.info.name)[\(i)]: LoRA merge \(g[i]) vs LyCORIS merge \(w[i])"); break
                }
            }
            XCTAssertGreaterThan(changed, 0, label)
        }
    }

    func testDiffusersOutputAndTruncationAndRefusals() throws {
        let dir = TestPaths.scratch(self)
        // diffusers PEFT-style output from a LoKr.
        try convert(root + "/lokr_tucker.safetensors", to: .diffusers, output: dir + "/diffusers", target: .rank(8))
        let keys = try TensorStore.open(dir + "/diffusers/pytorch_lora_weights.safetensors").entries.map(\.info.name)
        XCTAssertFalse(keys.isEmpty)
        XCTAssertTrue(keys.allSatisfy { $0.hasPrefix("unet.") && ($0.hasSuffix(".lora_A.weight") || $0.hasSuffix(".lora_B.weight")) }, "\(keys)")
        // Rank 1 truncates: every module has rank 1.
        try convert(root + "/loha.safetensors", to: .kohya, output: dir + "/r1.safetensors", target: .rank(1))
        for m in try AdapterRegistry.open(dir + "/r1.safetensors").modules { XCTAssertEqual(m.rank, 1, m.path) }
        // --rank on a plain LoRA input: resize does that.
        try convert(root + "/loha.safetensors", to: .kohya, output: dir + "/plain.safetensors", target: .energy(1))
        XCTAssertThrowsError(try convert(dir + "/plain.safetensors", to: .diffusers, output: dir + "/again", target: .rank(2))) { e in
            XCTAssertTrue("\(e)".contains("resize"), "\(e)")
        }
        XCTAssertFalse(FileSystem.exists(dir + "/again"))
    }
}
