import Foundation
import XCTest
@testable import OpConvertKit

/// s·B·A of every module of an adapter in f64, row-major [out, inner], by module path.
func lowRankProducts(_ path: String) throws -> [String: (out: Int, inner: Int, values: [Double])] {
    let adapter = try Adapter.openPEFT(path)
    var result: [String: (Int, Int, [Double])] = [:]
    for m in adapter.modules {
        let a = try m.a.floats(), b = try m.b.floats()
        let out = m.b.shape[0], inner = m.a.shape.dropFirst().reduce(1, *), r = m.rank
        var p = [Double](repeating: 0, count: out * inner)
        for o in 0..<out {
            for k in 0..<r {
                let bk = m.scaling * Double(b[o * r + k])
                for j in 0..<inner { p[o * inner + j] += bk * Double(a[k * inner + j]) }
            }
        }
        result[m.path] = (out, inner, p)
    }
    return result
}

func frobenius(_ v: [Double]) -> Double { v.reduce(0) { $0 + $1 * $1 }.squareRoot() }
func difference(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $0 - $1 } }

func loadExpected() throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("extract/expected.json")))
    return try JSONSerialization.jsonObject(with: data) as! [String: Any]
}

func adapterConfig(_ path: String) throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path + "/adapter_config.json"))
    return try JSONSerialization.jsonObject(with: data) as! [String: Any]
}

final class ExtractResizeCombineTests: XCTestCase {
    let base = TestPaths.fixture("peft/models/llama")

    /// TUNED - BASE per linear weight in f64.
    func deltas(_ tuned: String) throws -> [String: [Double]] {
        let b = try TensorStore.open(base), t = try TensorStore.open(tuned)
        var out: [String: [Double]] = [:]
        for e in b.entries where e.info.shape.count == 2 {
            guard let te = t.entry(named: e.info.name), te.info.shape == e.info.shape else { continue }
            let bv = try TensorData.stored(b, e).floats(), tv = try TensorData.stored(t, te).floats()
            out[String(e.info.name.dropLast(".weight".count))] = zip(tv, bv).map { Double($0) - Double($1) }
        }
        return out
    }

    func testKnownLowRankDeltaIsRecoveredUpToRounding() throws {
        let tuned = TestPaths.fixture("extract/tuned_lowrank")
        let d = try deltas(tuned)
        for exact in [false, true] {
            let out = TestPaths.scratch(self) + "/adapter"
            let s = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: out, target: .rank(4), exact: exact))
            XCTAssertEqual(s.method, exact ? "exact" : "randomized")
            XCTAssertEqual(s.modules.count, 13)
            XCTAssertTrue(s.unchanged.contains("model.layers.1.mlp.down_proj"))
            let products = try lowRankProducts(out)
            XCTAssertEqual(products.count, 13)
            for m in s.modules {
                XCTAssertEqual(m.rank, 4)
                XCTAssertLessThan(m.relativeError, 1e-6, m.name)
                XCTAssertEqual(m.retainedEnergy, 1, accuracy: 1e-9)
                // Independently: the written B·A against the exact delta.
                let p = try XCTUnwrap(products[m.name]).values
                XCTAssertLessThan(frobenius(difference(p, d[m.name]!)) / frobenius(d[m.name]!), 1e-6, m.name)
            }
            let config = try adapterConfig(out)
            XCTAssertEqual(config["r"] as? Int, 4)
            XCTAssertEqual(config["lora_alpha"] as? Int, 4)
        }
    }

    func testRandomDeltaMatchesNumpyTruncationError() throws {
        let tuned = TestPaths.fixture("extract/tuned_random")
        let reference = try XCTUnwrap(loadExpected()["extract_random_rank8"] as? [String: Double])
        let exactOut = TestPaths.scratch(self) + "/exact"
        let exact = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: exactOut, target: .rank(8), exact: true))
        let randomized = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: TestPaths.scratch(self) + "/rand",
                                                          target: .rank(8)))
        XCTAssertEqual(exact.modules.count, reference.count)
        for (e, r) in zip(exact.modules, randomized.modules) {
            let numpy = try XCTUnwrap(reference[e.name])
            XCTAssertEqual(e.relativeError, numpy, accuracy: 1e-6 * numpy, e.name)
            // The randomized SVD can only be worse than the optimum, and not by much.
            XCTAssertGreaterThanOrEqual(r.relativeError, numpy * (1 - 1e-6), r.name)
            XCTAssertLessThan(r.relativeError, numpy * 1.02, r.name)
        }
        XCTAssertEqual(Set(exact.modulesToSave), ["model.embed_tokens.weight", "lm_head.weight"])
        let saved = try TensorStore.open(exactOut + "/adapter_model.safetensors")
        XCTAssertEqual(saved.entry(named: "base_model.model.lm_head.weight")?.info.shape, [132, 64])
        XCTAssertEqual(try adapterConfig(exactOut)["modules_to_save"] as? [String], ["lm_head", "model.embed_tokens"])
    }

    func testEnergyPicksTheSmallestRankAndWritesRankPattern() throws {
        let tuned = TestPaths.fixture("extract/tuned_random")
        let reference = try XCTUnwrap(loadExpected()["extract_random_energy90"] as? [String: Int])
        let out = TestPaths.scratch(self) + "/adapter"
        let s = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: out, target: .energy(0.9)))
        XCTAssertEqual(s.method, "exact")
        for m in s.modules {
            XCTAssertEqual(m.rank, reference[m.name], m.name)
            XCTAssertGreaterThanOrEqual(m.retainedEnergy, 0.9 - 1e-9)
        }
        // Reopened through PEFT's rules, each module has its own rank at scaling 1.
        let adapter = try Adapter.openPEFT(out)
        for m in adapter.modules {
            XCTAssertEqual(m.rank, reference[m.path])
            XCTAssertEqual(m.scaling, 1)
        }
        XCTAssertGreaterThan(Set(reference.values).count, 1, "the fixture should need a rank_pattern")
    }

    func testSameSeedSameBytesAndTargetModules() throws {
        let tuned = TestPaths.fixture("extract/tuned_random")
        let dir = TestPaths.scratch(self)
        var outputs: [[UInt8]] = []
        for (name, seed) in [("a", UInt64(1)), ("b", UInt64(1)), ("c", UInt64(2))] {
            _ = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: "\(dir)/\(name)", target: .rank(4),
                                                 targetModules: ["q_proj", "layers.0.mlp.up_proj"], seed: seed))
            outputs.append(readBytes("\(dir)/\(name)/adapter_model.safetensors"))
        }
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertNotEqual(outputs[0], outputs[2])
        let adapter = try Adapter.openPEFT("\(dir)/a")
        XCTAssertEqual(Set(adapter.modules.map(\.path)),
                       ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj"])
        XCTAssertThrowsError(try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: "\(dir)/d", target: .rank(4),
                                                              targetModules: ["nonexistent_proj"]))) { error in
            XCTAssertEqual((error as? CategorizedError)?.category, .malformedInput)
            XCTAssertTrue("\(error)".contains("nonexistent_proj"))
        }
    }

    func testExtractRefusesBadOptionsAndExistingOutput() throws {
        let tuned = TestPaths.fixture("extract/tuned_lowrank")
        let dir = TestPaths.scratch(self)
        for target in [RankTarget.rank(0), .energy(0), .energy(1.5)] {
            XCTAssertThrowsError(try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: dir + "/x", target: target))) {
                XCTAssertEqual(($0 as? CategorizedError)?.category, .usage)
            }
        }
        XCTAssertThrowsError(try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: dir, target: .rank(2)))) {
            XCTAssertEqual(($0 as? CategorizedError)?.category, .outputConflict)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"))
    }

    func testResizeMatchesNumpySVDOfTheProduct() throws {
        let adapterPath = TestPaths.fixture("peft/adapters/llama_lora")
        let reference = try XCTUnwrap(loadExpected()["resize_llama_lora_rank4"] as? [String: [String: Any]])
        let out = TestPaths.scratch(self) + "/resized"
        let s = try Resizer.run(ResizeOptions(adapter: adapterPath, output: out, target: .rank(4)))
        let before = try lowRankProducts(adapterPath), after = try lowRankProducts(out)
        XCTAssertEqual(s.modules.count, reference.count)
        for m in s.modules {
            let ref = try XCTUnwrap(reference[m.name])
            let sv = try XCTUnwrap(ref["singular_values"] as? [Double])
            let numpyError = try XCTUnwrap(ref["relative_error"] as? Double)
            XCTAssertEqual([m.rankBefore, m.rank], [8, 4])
            XCTAssertEqual(m.relativeError, numpyError, accuracy: 1e-9, m.name)
            let kept = sv.prefix(4).reduce(0) { $0 + $1 * $1 } / sv.reduce(0) { $0 + $1 * $1 }
            XCTAssertEqual(m.retainedEnergy, kept, accuracy: 1e-9)
            // The written rank-4 product is the optimal truncation: its error is numpy's.
            let full = before[m.name]!.values, truncated = after[m.name]!.values
            XCTAssertEqual(frobenius(difference(full, truncated)) / frobenius(full), numpyError, accuracy: 1e-5, m.name)
        }
        XCTAssertEqual(try Adapter.openPEFT(out).modules.map(\.scaling), Array(repeating: 1, count: 14))
    }

    func testResizeKeepsRsLoRAScaleAndRefusesDoRA() throws {
        let rslora = TestPaths.fixture("peft/adapters/llama_rslora_patterns")
        let out = TestPaths.scratch(self) + "/resized"
        // Rank at least as large as every module's: the product is unchanged.
        _ = try Resizer.run(ResizeOptions(adapter: rslora, output: out, target: .rank(16)))
        let before = try lowRankProducts(rslora), after = try lowRankProducts(out)
        for (name, p) in before {
            XCTAssertLessThan(frobenius(difference(p.values, after[name]!.values)) / frobenius(p.values), 1e-6, name)
        }
        XCTAssertThrowsError(try Resizer.run(ResizeOptions(adapter: TestPaths.fixture("peft/adapters/llama_dora"),
                                                           output: TestPaths.scratch(self) + "/d", target: .rank(2)))) {
            XCTAssertEqual(($0 as? CategorizedError)?.category, .unsupported)
            XCTAssertTrue("\($0)".contains("DoRA"))
        }
    }

    func testCombineCatEqualsPEFTCat() throws {
        let a = TestPaths.fixture("peft/adapters/llama_lora"), b = TestPaths.fixture("peft/adapters/llama_lora_b")
        let out = TestPaths.scratch(self) + "/cat"
        let s = try Combiner.run(CombineOptions(adapters: [a, b], weights: [1, 0.5], output: out))
        let ours = try lowRankProducts(out), peft = try lowRankProducts(TestPaths.fixture("extract/combine_cat"))
        XCTAssertEqual(Set(ours.keys), Set(peft.keys))
        for (name, p) in peft {
            XCTAssertLessThan(frobenius(difference(p.values, ours[name]!.values)) / frobenius(p.values), 1e-6, name)
        }
        // The union keeps each module's own rank (no zero padding).
        let ranks = Dictionary(uniqueKeysWithValues: s.modules.map { ($0.name, $0.rank) })
        XCTAssertEqual(ranks["model.layers.0.self_attn.q_proj"], 12)
        XCTAssertEqual(ranks["model.layers.0.mlp.up_proj"], 8)
    }

    func testCombineRsLoRAUsesEachModulesOwnScaling() throws {
        let a = TestPaths.fixture("peft/adapters/llama_lora"), r = TestPaths.fixture("peft/adapters/llama_rslora_patterns")
        let out = TestPaths.scratch(self) + "/cat"
        _ = try Combiner.run(CombineOptions(adapters: [a, r], weights: [0.25, 2], output: out))
        let pa = try lowRankProducts(a), pr = try lowRankProducts(r), ours = try lowRankProducts(out)
        for (name, p) in ours {
            let expected = zip(pa[name]!.values, pr[name]!.values).map { 0.25 * $0 + 2 * $1 }
            XCTAssertLessThan(frobenius(difference(expected, p.values)) / frobenius(expected), 1e-6, name)
        }
    }

    func testCombineSVDIsNoWorseThanPEFT() throws {
        let a = TestPaths.fixture("peft/adapters/llama_lora"), b = TestPaths.fixture("peft/adapters/llama_lora_b")
        let peftError = try XCTUnwrap(loadExpected()["combine_svd_peft_error"] as? [String: Double])
        let cat = TestPaths.scratch(self) + "/cat", svd = TestPaths.scratch(self) + "/svd"
        _ = try Combiner.run(CombineOptions(adapters: [a, b], weights: [1, 0.5], output: cat))
        let s = try Combiner.run(CombineOptions(adapters: [a, b], weights: [1, 0.5], output: svd, method: .svd, target: .rank(6)))
        let exact = try lowRankProducts(cat), ours = try lowRankProducts(svd)
        for m in s.modules {
            XCTAssertEqual(m.rank, 6)
            let e = exact[m.name]!.values
            let error = frobenius(difference(e, ours[m.name]!.values)) / frobenius(e)
            XCTAssertEqual(error, m.relativeError, accuracy: 1e-5)
            XCTAssertLessThanOrEqual(error, try XCTUnwrap(peftError[m.name]) * (1 + 1e-4) + 1e-6, m.name)
        }
        XCTAssertThrowsError(try Combiner.run(CombineOptions(adapters: [a, b], output: TestPaths.scratch(self) + "/x", method: .svd))) {
            XCTAssertEqual(($0 as? CategorizedError)?.category, .usage)
        }
    }

    /// A one-module adapter written through the same writer, for shape and base checks.
    func syntheticAdapter(_ path: String, out: Int, inner: Int, baseModel: String) throws {
        let m = LowRankOutput(path: "model.layers.0.self_attn.q_proj", a: [Float](repeating: 0.5, count: 2 * inner), aShape: [2, inner],
                              b: [Float](repeating: 0.25, count: out * 2), bShape: [out, 2], bias: nil, isEmbedding: false)
        _ = try AdaptWriter.write(to: path, modules: [m], full: [], baseModel: baseModel, fanInFanOut: false,
                                  policy: OutputPolicy(overwrite: false, inputs: []))
    }

    func testCombineRefusesDifferentShapesAndWarnsAboutDifferentBases() throws {
        let dir = TestPaths.scratch(self)
        let a = TestPaths.fixture("peft/adapters/llama_lora")
        try syntheticAdapter(dir + "/wrong", out: 32, inner: 64, baseModel: "models/llama_f32")
        XCTAssertThrowsError(try Combiner.run(CombineOptions(adapters: [a, dir + "/wrong"], output: dir + "/x"))) {
            XCTAssertEqual(($0 as? CategorizedError)?.category, .malformedInput)
            XCTAssertTrue("\($0)".contains("model.layers.0.self_attn.q_proj"))
        }
        try syntheticAdapter(dir + "/other", out: 64, inner: 64, baseModel: "someone/other-model")
        let s = try Combiner.run(CombineOptions(adapters: [a, dir + "/other"], output: dir + "/y"))
        XCTAssertTrue(s.warnings.contains { $0.contains("other-model") && $0.contains("base_model_name_or_path") }, "\(s.warnings)")
    }
}
