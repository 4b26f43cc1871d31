import Foundation
import XCTest
@testable import OpConvertKit

/// A tensor for the synthetic SD files below: name, shape, values, storage dtype.
struct SDTestTensor {
    var name: String
    var shape: [Int]
    var values: [Float]
    var dtype: DType = .f32
}

/// Writes `tensors` as one safetensors file (f32 or f16 storage).
func writeSDTensors(_ path: String, _ tensors: [SDTestTensor], metadata: [String: String]? = nil) throws {
    let items: [(TensorSpec, [UInt8])] = tensors.map { t in
        var bytes: [UInt8] = []
        for v in t.values {
            switch t.dtype {
            case .f16: withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
            default: withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
            }
        }
        return (TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape), bytes)
    }
    try SafetensorsWriter.write(path: path, tensors: items, metadata: metadata)
}

/// Deterministic small values (multiples of 1/16 in [-1, 1]): exact in f16 and f32.
func sdValues(_ n: Int, seed: Int) -> [Float] {
    (0..<n).map { Float(((($0 + 1) * 37 + seed * 101) % 33) - 16) / 16 }
}

/// A tiny SD1.x single-file base in LDM names: a 3x3 resnet conv, attention projections
/// (to_out.0 with a bias) and a text-encoder q_proj.
enum SDTestBase {
    static let conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    static let toQ = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    static let toOut = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"
    static let toOutBias = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias"
    static let teQ = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    static let shapes: [String: [Int]] = [conv: [4, 4, 3, 3], toQ: [4, 4], toOut: [4, 4], toOutBias: [4], teQ: [4, 4]]

    static func write(_ dir: String) throws -> String {
        let path = dir + "/sd15.safetensors"
        try writeSDTensors(path, shapes.keys.sorted().enumerated().map { i, name in
            let shape = shapes[name]!
            return SDTestTensor(name: name, shape: shape, values: sdValues(shape.reduce(1, *), seed: 10 + i))
        })
        return path
    }
}

final class LyCORISAndDiffusersLoraTests: XCTestCase {
    // kohya names of the base's modules (diffusers block paths, as SD1.x trainers write them).
    let qName = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    let outName = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    let convName = "lora_unet_down_blocks_0_resnets_0_conv1"
    let teName = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"

    private func open(_ path: String) throws -> Adapter { try AdapterRegistry.open(path) }

    private func delta(_ a: Adapter, _ name: String) throws -> (shape: [Int], values: [Float]) {
        let d = try XCTUnwrap(a.deltas.first { $0.name == name }, "no delta \(name) in \(a.deltas.map(\.name))")
        XCTAssertEqual(d.scale, 1)
        return (d.data.shape, try d.data.floats())
    }

    // MARK: LyCORIS math (hand-computed values: bit-exact)

    func testLoHaIsTheHadamardProductOfTwoLowRankProductsTimesAlphaOverRank() throws {
        let dir = TestPaths.scratch(self), path = dir + "/loha.safetensors"
        // w1 = [[1],[2]]·[[3, 4]], w2 = [[1],[1]]·[[0.5, 2]]; r = 1, alpha 2: scale 2.
        try writeSDTensors(path, [
            SDTestTensor(name: "\(qName).hada_w1_a", shape: [2, 1], values: [1, 2]),
            SDTestTensor(name: "\(qName).hada_w1_b", shape: [1, 2], values: [3, 4]),
            SDTestTensor(name: "\(qName).hada_w2_a", shape: [2, 1], values: [1, 1]),
            SDTestTensor(name: "\(qName).hada_w2_b", shape: [1, 2], values: [0.5, 2]),
            SDTestTensor(name: "\(qName).alpha", shape: [], values: [2]),
        ])
        let a = try open(path)
        XCTAssertEqual(a.kind, .lycoris)
        XCTAssertTrue(a.modules.isEmpty)
        let d = try delta(a, qName + ".weight")
        XCTAssertEqual(d.shape, [2, 2])
        XCTAssertEqual(d.values, [3, 16, 6, 32])
    }

    func testLoKrAppliesAlphaOnlyWhenAHalfIsFactorized() throws {
        let dir = TestPaths.scratch(self)
        // Both halves whole: kron, alpha ignored.
        let whole = dir + "/lokr-whole.safetensors"
        try writeSDTensors(whole, [
            SDTestTensor(name: "\(qName).lokr_w1", shape: [2, 2], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).lokr_w2", shape: [2, 2], values: [0, 1, 1, 0]),
            SDTestTensor(name: "\(qName).alpha", shape: [], values: [0.5]),
        ])
        XCTAssertEqual(try delta(open(whole), qName + ".weight").values,
                       [0, 1, 0, 2, 1, 0, 2, 0, 0, 3, 0, 4, 3, 0, 4, 0])
        // w1 = [[1],[2]]·[[1, 1]] (rank 1), alpha 2: scale 2.
        let factored = dir + "/lokr-factored.safetensors"
        try writeSDTensors(factored, [
            SDTestTensor(name: "\(qName).lokr_w1_a", shape: [2, 1], values: [1, 2]),
            SDTestTensor(name: "\(qName).lokr_w1_b", shape: [1, 2], values: [1, 1]),
            SDTestTensor(name: "\(qName).lokr_w2", shape: [2, 2], values: [0, 1, 1, 0]),
            SDTestTensor(name: "\(qName).alpha", shape: [], values: [2]),
        ])
        XCTAssertEqual(try delta(open(factored), qName + ".weight").values,
                       [0, 2, 0, 2, 2, 0, 2, 0, 0, 4, 0, 4, 4, 0, 4, 0])
    }

    /// Tucker LoHa and Tucker LoCon against the sums written out index by index (f64).
    func testTuckerModulesMatchTheirDefiningSums() throws {
        let dir = TestPaths.scratch(self), path = dir + "/tucker.safetensors"
        let r = 2, out = 4, inn = 4, k = 9
        let t1 = sdValues(r * r * k, seed: 1), t2 = sdValues(r * r * k, seed: 2)
        let a1 = sdValues(r * out, seed: 3), b1 = sdValues(r * inn, seed: 4), a2 = sdValues(r * out, seed: 5), b2 = sdValues(r * inn, seed: 6)
        let down = sdValues(r * inn, seed: 7), mid = sdValues(r * r * k, seed: 8), up = sdValues(out * r, seed: 9)
        let locon = "lora_unet_down_blocks_0_resnets_0_conv1"
        try writeSDTensors(path, [
            SDTestTensor(name: "\(convName).hada_t1", shape: [r, r, 3, 3], values: t1),
            SDTestTensor(name: "\(convName).hada_t2", shape: [r, r, 3, 3], values: t2),
            SDTestTensor(name: "\(convName).hada_w1_a", shape: [r, out], values: a1),
            SDTestTensor(name: "\(convName).hada_w1_b", shape: [r, inn], values: b1),
            SDTestTensor(name: "\(convName).hada_w2_a", shape: [r, out], values: a2),
            SDTestTensor(name: "\(convName).hada_w2_b", shape: [r, inn], values: b2),
            SDTestTensor(name: "\(convName).alpha", shape: [], values: [1]),
            SDTestTensor(name: "\(teName).lora_down.weight", shape: [r, inn, 1, 1], values: down),
            SDTestTensor(name: "\(teName).lora_mid.weight", shape: [r, r, 3, 3], values: mid),
            SDTestTensor(name: "\(teName).lora_up.weight", shape: [out, r, 1, 1], values: up),
            SDTestTensor(name: "\(teName).alpha", shape: [], values: [3]),
        ])
        _ = locon
        let a = try open(path)
        func half(_ t: [Float], _ wa: [Float], _ wb: [Float], _ p: Int, _ q: Int, _ s: Int) -> Double {
            var sum = 0.0
            for i in 0..<r { for j in 0..<r { sum += Double(t[(i * r + j) * k + s]) * Double(wa[i * out + p]) * Double(wb[j * inn + q]) } }
            return sum
        }
        let loha = try delta(a, convName + ".weight")
        XCTAssertEqual(loha.shape, [out, inn, 3, 3])
        let tucker = try delta(a, teName + ".weight")
        XCTAssertEqual(tucker.shape, [out, inn, 3, 3])
        for p in 0..<out { for q in 0..<inn { for s in 0..<k {
            let i = (p * inn + q) * k + s
            let lohaExpected = half(t1, a1, b1, p, q, s) * half(t2, a2, b2, p, q, s) * (1.0 / 2.0)
            XCTAssertEqual(loha.values[i], Float(lohaExpected), accuracy: abs(Float(lohaExpected)) * 1e-6, "LoHa [\(p), \(q), \(s)]")
            var locon = 0.0
            for m in 0..<r { for n in 0..<r { locon += Double(up[p * r + m]) * Double(mid[(m * r + n) * k + s]) * Double(down[n * inn + q]) } }
            locon *= 3.0 / 2.0
            XCTAssertEqual(tucker.values[i], Float(locon), accuracy: abs(Float(locon)) * 1e-6, "Tucker LoCon [\(p), \(q), \(s)]")
        } } }
    }

    func testDiffDeltasAreUsedAsTheyAreForWeightAndBias() throws {
        let dir = TestPaths.scratch(self), path = dir + "/diff.safetensors"
        try writeSDTensors(path, [
            SDTestTensor(name: "\(outName).diff", shape: [4, 4], values: sdValues(16, seed: 3)),
            SDTestTensor(name: "\(outName).diff_b", shape: [4], values: [1, 2, 3, 4]),
        ])
        let a = try open(path)
        XCTAssertEqual(try delta(a, outName + ".weight").values, sdValues(16, seed: 3))
        XCTAssertEqual(try delta(a, outName + ".bias").values, [1, 2, 3, 4])
    }

    func testDoRAOnLoHaAndIncompleteModulesAreNamedErrors() throws {
        let dir = TestPaths.scratch(self)
        let dora = dir + "/doha.safetensors"
        try writeSDTensors(dora, [
            SDTestTensor(name: "\(qName).hada_w1_a", shape: [4, 1], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).hada_w1_b", shape: [1, 4], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).hada_w2_a", shape: [4, 1], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).hada_w2_b", shape: [1, 4], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).dora_scale", shape: [4, 1], values: [1, 2, 3, 4]),
        ])
        XCTAssertThrowsError(try open(dora)) { e in
            XCTAssertEqual((e as? CategorizedError)?.category, .unsupported)
            XCTAssertTrue("\(e)".contains(qName) && "\(e)".contains("dora_scale"), "\(e)")
        }
        let missing = dir + "/half.safetensors"
        try writeSDTensors(missing, [
            SDTestTensor(name: "\(qName).hada_w1_a", shape: [4, 1], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).hada_w1_b", shape: [1, 4], values: [1, 2, 3, 4]),
        ])
        XCTAssertThrowsError(try open(missing)) { e in
            XCTAssertEqual((e as? CategorizedError)?.category, .malformedInput)
            XCTAssertTrue("\(e)".contains("hada_w2_a"), "\(e)")
        }
    }

    // MARK: merge of LyCORIS deltas into an SD base

    func testLyCORISDeltasMergeIntoTheirBaseTensorsWithinOneRounding() throws {
        let dir = TestPaths.scratch(self)
        let base = try SDTestBase.write(dir)
        let path = dir + "/lycoris.safetensors"
        // A non-Tucker LoHa conv: factors flatten the 3x3 kernel ([r, in·9]).
        let w1a = sdValues(4 * 2, seed: 21), w1b = sdValues(2 * 36, seed: 22), w2a = sdValues(4 * 2, seed: 23), w2b = sdValues(2 * 36, seed: 24)
        try writeSDTensors(path, [
            SDTestTensor(name: "\(convName).hada_w1_a", shape: [4, 2], values: w1a),
            SDTestTensor(name: "\(convName).hada_w1_b", shape: [2, 36], values: w1b),
            SDTestTensor(name: "\(convName).hada_w2_a", shape: [4, 2], values: w2a),
            SDTestTensor(name: "\(convName).hada_w2_b", shape: [2, 36], values: w2b),
            SDTestTensor(name: "\(convName).alpha", shape: [], values: [1]),
            SDTestTensor(name: "\(outName).diff", shape: [4, 4], values: sdValues(16, seed: 25)),
            SDTestTensor(name: "\(outName).diff_b", shape: [4], values: [0.25, 0.5, 0.75, 1]),
        ])
        let output = dir + "/merged.safetensors"
        _ = try Merger.run(MergeOptions(base: base, adapters: [(path, 1)], output: output))
        let merged = try TensorStore.open(output), original = try TensorStore.open(base)
        func values(_ s: TensorStore, _ n: String) throws -> [Float] { try TensorData.stored(s, s.entry(named: n)!).floats() }
        let w = try values(original, SDTestBase.conv), m = try values(merged, SDTestBase.conv)
        for o in 0..<4 { for j in 0..<36 {
            var h1 = 0.0, h2 = 0.0
            for k in 0..<2 { h1 += Double(w1a[o * 2 + k]) * Double(w1b[k * 36 + j]); h2 += Double(w2a[o * 2 + k]) * Double(w2b[k * 36 + j]) }
            let exact = Float(Double(w[o * 36 + j]) + h1 * h2 * 0.5)
            XCTAssertEqual(m[o * 36 + j], exact, accuracy: exact.ulp, "conv [\(o), \(j)]")
        } }
        XCTAssertEqual(try values(merged, SDTestBase.toOut), zip(try values(original, SDTestBase.toOut), sdValues(16, seed: 25)).map { $0 + $1 })
        XCTAssertEqual(try values(merged, SDTestBase.toOutBias), zip(try values(original, SDTestBase.toOutBias), [0.25, 0.5, 0.75, 1]).map { $0 + $1 })
        XCTAssertEqual(try values(merged, SDTestBase.toQ), try values(original, SDTestBase.toQ))
    }

    /// fixtures/sd-lycoris: modules made by lycoris-lora itself; merged weights against W + its
    /// forward-pass delta computed in f64 and rounded once (our delta is rounded to f32 once
    /// before the merge's rounding, so: within one f32 ulp), and against lycoris's own f32 delta.
    func testLyCORISFixturesMergeToTheForwardPassDelta() throws {
        let root = TestPaths.fixture("sd-lycoris")
        let manifest = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(readBytes(root + "/cases.json"))) as? [String: Any])
        let cases = try XCTUnwrap(manifest["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 7)
        let dir = TestPaths.scratch(self), base = root + "/base.safetensors"
        let original = try TensorStore.open(base)
        for c in cases {
            let name = try XCTUnwrap(c["name"] as? String), adapter = root + "/" + (try XCTUnwrap(c["adapter"] as? String))
            // Every key of the file is one of lycoris's, and the merge uses them all (it refuses leftovers).
            XCTAssertEqual(try TensorStore.open(adapter).entries.map(\.info.name).sorted(), try XCTUnwrap(c["keys"] as? [String]), name)
            let out = dir + "/\(name).safetensors"
            let summary = try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: out))
            XCTAssertEqual(summary.adapters.first?.kind, "lycoris", name)
            let merged = try TensorStore.open(out), expected = try TensorStore.open(root + "/" + (try XCTUnwrap(c["expected"] as? String)))
            var checked = 0
            for e in expected.entries where e.info.name.hasPrefix("merged.") {
                let tensor = String(e.info.name.dropFirst("merged.".count))
                let want = try TensorData.stored(expected, e).floats()
                let got = try TensorData.stored(merged, merged.entry(named: tensor)!).floats()
                let w = try TensorData.stored(original, original.entry(named: tensor)!).floats()
                let lycoris = try TensorData.stored(expected, expected.entry(named: "forward_f32." + tensor)!).floats()
                let scale = lycoris.map { abs($0) }.max() ?? 1
                var exact = 0
                for i in want.indices {
                    // got = round(W + round32(Δ)), want = round(W + Δ): the sums differ by at most
                    // half an ulp of Δ, so their roundings by at most that and one ulp of the sum.
                    let bound = Double(abs(want[i] - w[i]).ulp) / 2 + Double(want[i].ulp)
                    XCTAssertLessThanOrEqual(abs(Double(got[i]) - Double(want[i])), bound * 1.0001, "\(name) \(tensor)[\(i)]: \(got[i]) vs \(want[i])")
                    XCTAssertEqual(got[i] - w[i], lycoris[i], accuracy: scale * 1e-5, "\(name) \(tensor)[\(i)] vs lycoris f32")
                    if got[i] == want[i] { exact += 1 }
                }
                // Double rounding (Δ to f32, then the sum) leaves about a quarter one ulp off here,
                // where |Δ| is as large as |W|; most are the correctly rounded value.
                XCTAssertGreaterThan(exact, want.count / 2, "\(name) \(tensor): \(exact) of \(want.count) exact")
                checked += 1
            }
            XCTAssertGreaterThan(checked, 0, name)
        }
    }

    /// fixtures/sd (issue 13's SD1.x cases): the LyCORIS and diffusers cases. Per module, our
    /// delta against deltas.safetensors (f64 formulas rounded once: ours is the same rounding of
    /// a differently ordered f64 sum, so bit-equal or one ulp); every key of the file is used;
    /// merged into the pipeline directory and the single file, the changed tensors equal the
    /// expected ones within a few f32 roundings of the tensor's scale, and nothing else changes.
    func testSDFixtureLyCORISAndDiffusersCases() throws {
        let root = TestPaths.fixture("sd")
        let manifest = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(readBytes(root + "/cases.json"))) as? [String: Any])
        let bases = try XCTUnwrap(manifest["bases"] as? [String: [String: Any]])
        let cases = try XCTUnwrap(manifest["cases"] as? [[String: Any]]).filter {
            let n = $0["name"] as? String ?? ""
            return n.hasPrefix("lycoris_") || n.hasPrefix("diffusers_")
        }
        XCTAssertGreaterThanOrEqual(cases.count, 11)
        let dir = TestPaths.scratch(self)
        for c in cases {
            let name = try XCTUnwrap(c["name"] as? String), adapterPath = root + "/" + (try XCTUnwrap(c["adapter"] as? String))
            let adapter = try AdapterRegistry.open(adapterPath)
            let weights = FileSystem.isDirectory(adapterPath) ? adapterPath + "/pytorch_lora_weights.safetensors" : adapterPath
            XCTAssertEqual(try TensorStore.open(weights).tensorCount, c["adapter_keys"] as? Int, name)

            // Deltas, module by module.
            let deltas = try TensorStore.open(root + "/" + (try XCTUnwrap(c["deltas"] as? String)))
            XCTAssertEqual(deltas.tensorCount, adapter.modules.count + adapter.deltas.count, "\(name): one expected delta per module")
            var bitEqual = 0, total = 0
            for e in deltas.entries {
                let want = try TensorData.stored(deltas, e).floats()
                let mine: [Float]
                if let d = adapter.deltas.first(where: { $0.name == e.info.name || $0.name == e.info.name + ".weight" }) {
                    mine = try d.data.floats().map { $0 * Float(d.scale) }
                } else {
                    // Older diffusers styles key their deltas by the key stem (`...fc1.lora_linear_layer`,
                    // `...attn1.processor.to_q_lora`): the module that stem's down key belongs to.
                    let module = DiffusersLoraFormat.split(e.info.name + ".down.weight")?.module ?? e.info.name
                    let m = try XCTUnwrap(adapter.modules.first { $0.path == e.info.name || $0.path == module }, "\(name): no module for \(e.info.name)")
                    let a = try m.a.floats().map(Double.init), b = try m.b.floats().map(Double.init)
                    let r = m.rank, cols = a.count / r, rows = b.count / r
                    mine = (0..<(rows * cols)).map { i in
                        var sum = 0.0
                        for k in 0..<r { sum += b[(i / cols) * r + k] * a[k * cols + i % cols] }
                        return Float(sum * m.scaling)
                    }
                }
                XCTAssertEqual(mine.count, want.count, "\(name) \(e.info.name)")
                guard mine.count == want.count else { continue }
                for i in want.indices {
                    total += 1
                    if mine[i] == want[i] { bitEqual += 1 } else {
                        XCTAssertEqual(mine[i], want[i], accuracy: want[i].ulp, "\(name) \(e.info.name)[\(i)]")
                    }
                }
            }
            XCTAssertGreaterThan(bitEqual, total * 9 / 10, "\(name): \(bitEqual) of \(total) delta values bit-equal")

            // Merged into each base.
            let expected = try XCTUnwrap(c["expected"] as? [String: Any])
            for baseID in try XCTUnwrap(c["bases"] as? [String]) {
                let basePath = root + "/" + (try XCTUnwrap(bases[baseID]?["path"] as? String))
                let single = basePath.hasSuffix(".safetensors")
                let out = dir + "/\(name)-\(baseID)" + (single ? ".safetensors" : "")
                let summary = try Merger.run(MergeOptions(base: basePath, adapters: [(adapterPath, 1)], output: out))
                let merged = try TensorStore.open(out), base = try TensorStore.open(basePath)
                var files: [(prefix: String, path: String)] = []
                if let file = expected[baseID] as? String { files = [("", file)] } else {
                    files = try XCTUnwrap(expected[baseID] as? [String: String]).map { ($0.key + "/", $0.value) }
                }
                var changed = 0
                for (prefix, file) in files {
                    let want = try TensorStore.open(root + "/" + file)
                    for e in want.entries {
                        changed += 1
                        let w = try TensorData.stored(want, e).floats()
                        let gotEntry = try XCTUnwrap(merged.entry(named: prefix + e.info.name), "\(name) \(baseID): \(prefix + e.info.name)")
                        let g = try TensorData.stored(merged, gotEntry).floats()
                        let scale = w.map { abs($0) }.max() ?? 1
                        let worst = zip(g, w).map { abs($0 - $1) }.max() ?? 0
                        // F16 bases (SDXL): one rounding to f16 at the tensor's scale.
                        let eps: Float = (bases[baseID]?["dtype"] as? String) == "F16" ? 1.0 / 1024 : 4 * .ulpOfOne
                        XCTAssertLessThanOrEqual(worst, eps * scale, "\(name) \(baseID) \(e.info.name)")
                    }
                }
                XCTAssertEqual(summary.mergedTensors, changed, "\(name) \(baseID): tensors changed")
                XCTAssertEqual(merged.tensorCount, base.tensorCount)
            }
        }
    }

    // MARK: diffusers LoRA files

    func testDiffusersPEFTStyleTakesAlphasFromTheMetadataPerComponent() throws {
        let dir = TestPaths.scratch(self)
        let unetQ = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        let unetOut = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
        let te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
        let meta = """
        {"text_encoder.lora_alpha": 1, "text_encoder.r": 2, "unet.alpha_pattern": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": 8}, "unet.lora_alpha": 4, "unet.r": 2, "unet.rank_pattern": {}}
        """
        try FileManager.default.createDirectory(atPath: dir + "/lora", withIntermediateDirectories: true)
        let file = dir + "/lora/pytorch_lora_weights.safetensors"
        try writeSDTensors(file, [unetQ, unetOut, te].flatMap { m in [
            SDTestTensor(name: m + ".lora_A.weight", shape: [2, 4], values: sdValues(8, seed: 1)),
            SDTestTensor(name: m + ".lora_B.weight", shape: [4, 2], values: sdValues(8, seed: 2)),
        ] }, metadata: ["format": "pt", "lora_adapter_metadata": meta])
        XCTAssertEqual(AdapterRegistry.format(of: dir + "/lora")?.id, .diffusers)
        XCTAssertEqual(AdapterRegistry.format(of: file)?.id, .diffusers)
        let a = try open(dir + "/lora")
        XCTAssertEqual(a.kind, .diffusersLora)
        let scalings = Dictionary(uniqueKeysWithValues: a.modules.map { ($0.path, $0.scaling) })
        XCTAssertEqual(scalings, [unetQ: 2, unetOut: 4, te: 0.5])
        // The names resolve against an LDM single file.
        let base = try SDTestBase.write(dir)
        let resolver = a.naming.resolver(baseNames: try TensorStore.open(base).entries.map(\.info.name))
        XCTAssertEqual(resolver.resolve(unetQ + ".weight"), .found(SDTestBase.toQ))
        XCTAssertEqual(resolver.resolve(te + ".weight"), .found(SDTestBase.teQ))
    }

    func testDiffusersAlphaKeysAndAttentionProcessorKeys() throws {
        let dir = TestPaths.scratch(self), file = dir + "/old.safetensors"
        let attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        try writeSDTensors(file, [
            SDTestTensor(name: attn + ".processor.to_out_lora.down.weight", shape: [2, 4], values: sdValues(8, seed: 1)),
            SDTestTensor(name: attn + ".processor.to_out_lora.up.weight", shape: [4, 2], values: sdValues(8, seed: 2)),
            SDTestTensor(name: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight", shape: [2, 4], values: sdValues(8, seed: 3)),
            SDTestTensor(name: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight", shape: [4, 2], values: sdValues(8, seed: 4)),
            SDTestTensor(name: "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.alpha", shape: [], values: [1]),
        ])
        let a = try open(file)
        let byPath = Dictionary(uniqueKeysWithValues: a.modules.map { ($0.path, $0) })
        XCTAssertEqual(byPath[attn + ".to_out.0"]?.scaling, 1)
        XCTAssertEqual(byPath["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]?.scaling, 0.5)
        // Merged, the processor key changes to_out.0 of the base.
        let base = try SDTestBase.write(dir), output = dir + "/merged.safetensors"
        let summary = try Merger.run(MergeOptions(base: base, adapters: [(file, 1)], output: output))
        XCTAssertEqual(summary.mergedTensors, 2)
    }

    func testDiffusersKeysNoModuleUsesAreListed() throws {
        let dir = TestPaths.scratch(self), file = dir + "/bad.safetensors"
        try writeSDTensors(file, [
            SDTestTensor(name: "unet.a.lora_A.weight", shape: [2, 4], values: sdValues(8, seed: 1)),
            SDTestTensor(name: "unet.a.lora_B.weight", shape: [4, 2], values: sdValues(8, seed: 2)),
            SDTestTensor(name: "unet.a.hada_w1_a", shape: [4, 2], values: sdValues(8, seed: 2)),
        ])
        XCTAssertThrowsError(try open(file)) { e in
            XCTAssertEqual((e as? CategorizedError)?.category, .malformedInput)
            XCTAssertTrue("\(e)".contains("unet.a.hada_w1_a"), "\(e)")
        }
    }

    // MARK: convert kohya <-> diffusers

    /// A kohya LoRA with f16 factors, per-module alphas, a 3x3 LoCon and a DoRA module.
    private func writeKohya(_ path: String) throws {
        try writeSDTensors(path, [
            SDTestTensor(name: "\(qName).lora_down.weight", shape: [2, 4], values: sdValues(8, seed: 1), dtype: .f16),
            SDTestTensor(name: "\(qName).lora_up.weight", shape: [4, 2], values: sdValues(8, seed: 2), dtype: .f16),
            SDTestTensor(name: "\(qName).alpha", shape: [], values: [1], dtype: .f16),
            SDTestTensor(name: "\(outName).lora_down.weight", shape: [2, 4], values: sdValues(8, seed: 3), dtype: .f16),
            SDTestTensor(name: "\(outName).lora_up.weight", shape: [4, 2], values: sdValues(8, seed: 4), dtype: .f16),
            SDTestTensor(name: "\(outName).alpha", shape: [], values: [3], dtype: .f16),
            SDTestTensor(name: "\(outName).dora_scale", shape: [4, 1], values: [1.5, 2, 0.75, 1], dtype: .f16),
            SDTestTensor(name: "\(convName).lora_down.weight", shape: [2, 4, 3, 3], values: sdValues(72, seed: 5), dtype: .f16),
            SDTestTensor(name: "\(convName).lora_up.weight", shape: [4, 2, 1, 1], values: sdValues(8, seed: 6), dtype: .f16),
            SDTestTensor(name: "\(convName).alpha", shape: [], values: [2], dtype: .f16),
            SDTestTensor(name: "\(teName).lora_down.weight", shape: [2, 4], values: sdValues(8, seed: 7), dtype: .f16),
            SDTestTensor(name: "\(teName).lora_up.weight", shape: [4, 2], values: sdValues(8, seed: 8), dtype: .f16),
        ])
    }

    private func tensorBytes(_ path: String) throws -> [String: ([Int], DType, [UInt8])] {
        let s = try TensorStore.open(path)
        return Dictionary(uniqueKeysWithValues: s.entries.map { ($0.info.name, ($0.info.shape, $0.info.dtype, Array(s.data($0)))) })
    }

    func testKohyaToDiffusersAndBackIsBitExact() throws {
        let dir = TestPaths.scratch(self)
        let base = try SDTestBase.write(dir)
        let kohya = dir + "/kohya.safetensors"
        try writeKohya(kohya)
        var toDiffusers = ConvertOptions(input: kohya, output: dir + "/diffusers")
        toDiffusers.to = .diffusers
        toDiffusers.base = base
        _ = try Converter.run(toDiffusers)
        let diffusersFile = dir + "/diffusers/pytorch_lora_weights.safetensors"
        let d = try tensorBytes(diffusersFile)
        XCTAssertEqual(Set(d.keys), Set(["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                                         "unet.down_blocks.0.resnets.0.conv1", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"].flatMap { [$0 + ".lora_A.weight", $0 + ".lora_B.weight"] }
                                        + ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_magnitude_vector"]))
        let opened = try AdapterRegistry.open(dir + "/diffusers")
        let scalings = Dictionary(uniqueKeysWithValues: opened.modules.map { ($0.path, $0.scaling) })
        XCTAssertEqual(scalings["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"], 1.5)
        XCTAssertEqual(scalings["unet.down_blocks.0.resnets.0.conv1"], 1)
        XCTAssertEqual(scalings["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"], 1)

        var back = ConvertOptions(input: dir + "/diffusers", output: dir + "/back.safetensors")
        back.to = .kohya
        back.base = base
        _ = try Converter.run(back)
        let original = try tensorBytes(kohya), roundTrip = try tensorBytes(dir + "/back.safetensors")
        // The te module had no alpha (alpha = r); it comes back explicit, = 2.
        XCTAssertEqual(Set(roundTrip.keys), Set(original.keys).union(["\(teName).alpha"]))
        for (name, t) in original {
            XCTAssertEqual(roundTrip[name]?.0, t.0, name)
            XCTAssertEqual(roundTrip[name]?.1, t.1, name)
            XCTAssertEqual(roundTrip[name]?.2, t.2, "\(name): bytes differ")
        }
        XCTAssertEqual(try TensorData.stored(TensorStore.open(dir + "/back.safetensors"), TensorStore.open(dir + "/back.safetensors").entry(named: "\(teName).alpha")!).floats(), [2])

        // Merged, the kohya file and its diffusers conversion give the same bits.
        _ = try Merger.run(MergeOptions(base: base, adapters: [(kohya, 1)], output: dir + "/m1.safetensors"))
        _ = try Merger.run(MergeOptions(base: base, adapters: [(dir + "/diffusers", 1)], output: dir + "/m2.safetensors"))
        let m1 = try tensorBytes(dir + "/m1.safetensors"), m2 = try tensorBytes(dir + "/m2.safetensors")
        for (name, t) in m1 { XCTAssertEqual(m2[name]?.2, t.2, name) }
        XCTAssertNotEqual(m1[SDTestBase.conv]?.2, try tensorBytes(base)[SDTestBase.conv]?.2)
    }

    /// fixtures/sd: sdfix's kohya LoRA and DoRA (per-module alphas, one missing, one 0) and
    /// diffusers PEFT file (alpha/rank patterns), converted there and back through each base.
    func testSDFixtureConversionsRoundTripBitExact() throws {
        let root = TestPaths.fixture("sd"), dir = TestPaths.scratch(self)
        for base in [root + "/base/sd15", root + "/base/sd15.safetensors"] {
            for kohya in ["kohya_lora_sd15", "kohya_dora_sd15"] {
                let input = root + "/adapters/\(kohya).safetensors", mid = dir + "/\(kohya)-\(base.hasSuffix("safetensors") ? "single" : "pipe")"
                var there = ConvertOptions(input: input, output: mid)
                there.to = .diffusers
                there.base = base
                _ = try Converter.run(there)
                var back = ConvertOptions(input: mid, output: mid + ".safetensors")
                back.to = .kohya
                back.base = base
                _ = try Converter.run(back)
                let original = try tensorBytes(input), roundTrip = try tensorBytes(mid + ".safetensors")
                for (name, t) in original {
                    let got = try XCTUnwrap(roundTrip[name], "\(kohya): \(name) lost")
                    XCTAssertEqual(got.0, t.0, name)
                    XCTAssertEqual(got.1, t.1, name)
                    // An alpha of 0 means alpha = r, and is written back as r.
                    if name.hasSuffix(".alpha"), t.2.allSatisfy({ $0 == 0 }) { continue }
                    XCTAssertEqual(got.2, t.2, "\(kohya) \(name): bytes differ")
                }
                // A module without alpha gets it written (= r); nothing else is added.
                for name in Set(roundTrip.keys).subtracting(original.keys) { XCTAssertTrue(name.hasSuffix(".alpha"), name) }
            }
            let diffusers = root + "/adapters/diffusers_peft_sd15", mid = dir + "/peft-\(base.hasSuffix("safetensors") ? "single" : "pipe").safetensors"
            var toKohya = ConvertOptions(input: diffusers, output: mid)
            toKohya.to = .kohya
            toKohya.base = base
            _ = try Converter.run(toKohya)
            var back = ConvertOptions(input: mid, output: mid + "-back")
            back.to = .diffusers
            back.base = base
            _ = try Converter.run(back)
            XCTAssertEqual(try tensorBytes(mid + "-back/pytorch_lora_weights.safetensors").mapValues(\.2),
                           try tensorBytes(diffusers + "/pytorch_lora_weights.safetensors").mapValues(\.2))
            let a = try AdapterRegistry.open(diffusers), b = try AdapterRegistry.open(mid + "-back")
            XCTAssertEqual(Dictionary(uniqueKeysWithValues: a.modules.map { ($0.path, $0.scaling) }),
                           Dictionary(uniqueKeysWithValues: b.modules.map { ($0.path, $0.scaling) }))
        }
    }

    /// An SDXL single file (SGM names, OpenCLIP's fused in_proj for text_encoder_2): diffusers ->
    /// kohya writes SGM UNet names and lora_te1_/lora_te2_, a k_proj LoRA lands on the middle
    /// third of in_proj_weight, and back to diffusers gives the same file's tensors.
    func testSDXLConversionUsesSGMNamesAndTheFusedThirds() throws {
        let dir = TestPaths.scratch(self), base = dir + "/sdxl.safetensors"
        let unetQ = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
        let inProj = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
        try writeSDTensors(base, [
            SDTestTensor(name: "model.diffusion_model.input_blocks.3.0.op.weight", shape: [4, 4, 3, 3], values: sdValues(144, seed: 1)),
            SDTestTensor(name: unetQ, shape: [4, 4], values: sdValues(16, seed: 2)),
            SDTestTensor(name: "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", shape: [4, 4], values: sdValues(16, seed: 3)),
            SDTestTensor(name: inProj, shape: [12, 4], values: sdValues(48, seed: 4)),
            SDTestTensor(name: "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias", shape: [12], values: sdValues(12, seed: 5)),
        ])
        let modules = ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                       "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj"]
        let lora = dir + "/sdxl-lora.safetensors"
        try writeSDTensors(lora, modules.enumerated().flatMap { i, m in [
            SDTestTensor(name: m + ".lora_A.weight", shape: [2, 4], values: sdValues(8, seed: 10 + i)),
            SDTestTensor(name: m + ".lora_B.weight", shape: [4, 2], values: sdValues(8, seed: 20 + i)),
        ] })
        var toKohya = ConvertOptions(input: lora, output: dir + "/kohya.safetensors")
        toKohya.to = .kohya
        toKohya.base = base
        _ = try Converter.run(toKohya)
        XCTAssertEqual(Set(try tensorBytes(dir + "/kohya.safetensors").keys), Set(["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te2_text_model_encoder_layers_0_self_attn_k_proj"].flatMap {
                [$0 + ".lora_down.weight", $0 + ".lora_up.weight", $0 + ".alpha"] }))
        var back = ConvertOptions(input: dir + "/kohya.safetensors", output: dir + "/back.safetensors")
        back.to = .diffusers
        back.base = base
        _ = try Converter.run(back)
        XCTAssertEqual(try tensorBytes(dir + "/back.safetensors").mapValues(\.2), try tensorBytes(lora).mapValues(\.2))
        // Merged: only the middle third of in_proj_weight changes, and both files agree.
        _ = try Merger.run(MergeOptions(base: base, adapters: [(lora, 1)], output: dir + "/m1.safetensors"))
        _ = try Merger.run(MergeOptions(base: base, adapters: [(dir + "/kohya.safetensors", 1)], output: dir + "/m2.safetensors"))
        let m1 = try tensorBytes(dir + "/m1.safetensors"), m2 = try tensorBytes(dir + "/m2.safetensors"), b = try tensorBytes(base)
        XCTAssertEqual(m1.mapValues(\.2), m2.mapValues(\.2))
        let fused = try XCTUnwrap(m1[inProj]?.2), original = try XCTUnwrap(b[inProj]?.2)
        let third = original.count / 3
        XCTAssertEqual(Array(fused[..<third]), Array(original[..<third]))
        XCTAssertNotEqual(Array(fused[third..<(2 * third)]), Array(original[third..<(2 * third)]))
        XCTAssertEqual(Array(fused[(2 * third)...]), Array(original[(2 * third)...]))
        XCTAssertNotEqual(m1[unetQ]?.2, b[unetQ]?.2)
    }

    func testLyCORISToLoRAConversionIsRefusedAsNeedingRank() throws {
        let dir = TestPaths.scratch(self)
        let base = try SDTestBase.write(dir)
        let path = dir + "/lokr.safetensors"
        try writeSDTensors(path, [
            SDTestTensor(name: "\(qName).lokr_w1", shape: [2, 2], values: [1, 2, 3, 4]),
            SDTestTensor(name: "\(qName).lokr_w2", shape: [2, 2], values: [0, 1, 1, 0]),
        ])
        for to in [AdapterFormatID.diffusers, .kohya, .peft] {
            var o = ConvertOptions(input: path, output: dir + "/out-\(to.rawValue)" + (to == .kohya ? ".safetensors" : ""))
            o.to = to
            o.base = base
            XCTAssertThrowsError(try Converter.run(o), "\(to)") { e in
                XCTAssertEqual((e as? CategorizedError)?.category, .unsupported, "\(e)")
                if to != .peft { XCTAssertTrue("\(e)".contains("--rank"), "\(e)") }
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: o.output))
        }
    }

    func testKohyaToDiffusersWithoutBaseSaysToGiveIt() throws {
        let dir = TestPaths.scratch(self), kohya = dir + "/kohya.safetensors"
        try writeKohya(kohya)
        var o = ConvertOptions(input: kohya, output: dir + "/out")
        o.to = .diffusers
        XCTAssertThrowsError(try Converter.run(o)) { e in
            XCTAssertEqual((e as? CategorizedError)?.category, .unsupported)
            XCTAssertTrue("\(e)".contains("--base"), "\(e)")
        }
    }
}
