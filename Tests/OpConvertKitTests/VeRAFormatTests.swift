import Foundation
import XCTest
@testable import OpConvertKit

/// PEFT VeRA adapters against the real PEFT (fixtures/vera, made by
/// fixtures/scripts/make_vera_fixtures.py): merges, the equivalent LoRA, and the seeded
/// projections regenerated with torch's CPU generator.
final class VeRAFormatTests: XCTestCase {
    struct Case {
        var name: String
        var base: String
        var adapter: String
        var expected: String
        var lora: String
        var saveProjection: Bool
        var fanInFanOut: Bool
        var modules: Int
        var changed: Set<String>
    }

    static func vera(_ relative: String) -> String { TestPaths.fixture("vera/" + relative) }

    private func cases() throws -> [Case] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vera("cases.json")))
        let root = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (root["cases"] as! [[String: Any]]).map { c in
            Case(name: c["name"] as! String, base: Self.vera(c["base"] as! String), adapter: Self.vera(c["adapter"] as! String),
                 expected: Self.vera(c["expected"] as! String), lora: Self.vera(c["lora"] as! String),
                 saveProjection: c["save_projection"] as! Bool, fanInFanOut: c["fan_in_fan_out"] as! Bool,
                 modules: c["modules"] as! Int, changed: Set(c["changed"] as! [String]))
        }
    }

    private func merge(base: String, adapter: String) throws -> String {
        let out = TestPaths.scratch(self) + "/merged"
        _ = try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1.0)], output: out, showProgress: false))
        return out
    }

    private func bits(_ store: TensorStore, _ name: String) -> [UInt8] {
        guard let e = store.entry(named: name) else { return [] }
        return Array(store.data(e))
    }

    // MARK: torch's generator

    func testMT19937MatchesTheStandardSequence() {
        // The C++ standard pins the 10000th output of mt19937 with the default seed 5489.
        var g = TorchGenerator(seed: 5489)
        var last: UInt32 = 0
        for _ in 0..<10000 { last = g.nextUInt32() }
        XCTAssertEqual(last, 4_123_659_995)
        // torch keeps the low 32 bits of a 64-bit seed.
        var wide = TorchGenerator(seed: (1 << 32) + 5489), narrow = TorchGenerator(seed: 5489)
        XCTAssertEqual((0..<700).map { _ in wide.nextUInt32() }, (0..<700).map { _ in narrow.nextUInt32() })
    }

    func testKaimingProjectionsMatchTorchBitForBit() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.vera("rng/cases.json")))
        let list = try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
        let store = try TensorStore.open(Self.vera("rng/torch_kaiming.safetensors"))
        XCTAssertGreaterThanOrEqual(list.count, 5)
        for (i, c) in list.enumerated() {
            let key = (c["key"] as! NSNumber).uint64Value, r = c["r"] as! Int, inF = c["in"] as! Int, outF = c["out"] as! Int
            var g = TorchGenerator(seed: key)
            let a = g.kaimingUniformFloat32(rows: r, columns: inF)
            let b = g.kaimingUniformFloat32(rows: outF, columns: r)
            for (got, name) in [(a, "case\(i).vera_A"), (b, "case\(i).vera_B")] {
                let want = try TensorData.stored(store, store.entry(named: name)!).floats()
                XCTAssertEqual(got.count, want.count, name)
                let differing = zip(got, want).filter { $0.bitPattern != $1.bitPattern }.count
                XCTAssertEqual(differing, 0, "\(name) (key \(key)): \(differing) of \(want.count) values differ from torch")
            }
        }
    }

    // MARK: the format

    func testRegistryPicksVeRABeforePEFT() throws {
        for c in try cases() {
            XCTAssertEqual(AdapterRegistry.format(of: c.adapter)?.id, .vera, c.name)
        }
        XCTAssertEqual(AdapterRegistry.format(of: TestPaths.fixture("peft/adapters/llama_lora"))?.id, .peft)
        XCTAssertEqual(AdapterRegistry.format(of: Self.vera("expected/vera_f32_lora"))?.id, .peft)
    }

    func testMergeMatchesPEFTsMergeAndUnload() throws {
        for c in try cases() {
            let out = try merge(base: c.base, adapter: c.adapter)
            let got = try TensorStore.open(out), want = try TensorStore.open(c.expected), base = try TensorStore.open(c.base)
            XCTAssertEqual(Set(got.entries.map(\.info.name)), Set(want.entries.map(\.info.name)), c.name)
            XCTAssertEqual(c.changed.count, c.modules, "\(c.name): every adapted weight changes")
            var worst = 0.0
            for w in want.entries {
                guard let g = got.entry(named: w.info.name) else { continue }
                XCTAssertEqual(g.info.dtype, w.info.dtype, "\(c.name): \(w.info.name)")
                let gb = Array(got.data(g)), wb = Array(want.data(w))
                if !c.changed.contains(w.info.name) {
                    XCTAssertEqual(gb, bits(base, w.info.name), "\(c.name): \(w.info.name) should be untouched")
                    continue
                }
                XCTAssertNotEqual(gb, bits(base, w.info.name), "\(c.name): \(w.info.name) should change")
                if let message = MergeFixtureTests.mismatch(gb, wb, dtype: w.info.dtype) {
                    XCTFail("\(c.name): \(w.info.name): \(message)")
                }
                worst = max(worst, Self.maxError(gb, wb, dtype: w.info.dtype))
            }
            print("VeRA \(c.name): merge vs PEFT, max error \(worst) ulp (f32: of each tensor's largest magnitude)")
        }
    }

    func testSaveProjectionFalseMergesLikeTrue() throws {
        let all = try cases()
        for seeded in all where !seeded.saveProjection {
            let saved = try XCTUnwrap(all.first { $0.saveProjection && $0.expected == seeded.expected })
            let a = try TensorStore.open(try merge(base: seeded.base, adapter: seeded.adapter))
            let b = try TensorStore.open(try merge(base: saved.base, adapter: saved.adapter))
            for e in b.entries { XCTAssertEqual(bits(a, e.info.name), bits(b, e.info.name), "\(seeded.name): \(e.info.name)") }
        }
    }

    /// A' = λ_d ⊙ A[:, :in] and B' = λ_b ⊙ B[:out] are the very f32 values PEFT's
    /// get_delta_weight multiplies (the fixture script checked that PEFT merges the LoRA
    /// built from them to the bits of its VeRA merge).
    func testOpenedFactorsAreExactlyPEFTsProducts() throws {
        for c in try cases() {
            let adapter = try VeRAFormat.open(c.adapter, options: AdapterOpenOptions(base: try TensorStore.open(c.base)))
            XCTAssertEqual(adapter.kind, .peftVera)
            XCTAssertEqual(adapter.modules.count, c.modules)
            let lora = try TensorStore.open(c.lora + "/adapter_model.safetensors")
            for m in adapter.modules {
                XCTAssertEqual(m.scaling, 1)
                XCTAssertEqual(m.rank, 8)
                XCTAssertEqual(m.fanInFanOut, c.fanInFanOut)
                for (data, part) in [(m.a, "lora_A"), (m.b, "lora_B")] {
                    let name = "base_model.model.\(m.path).\(part).weight"
                    let want = try TensorData.stored(lora, try XCTUnwrap(lora.entry(named: name), name)).floats()
                    XCTAssertEqual(data.shape, lora.entry(named: name)!.info.shape, name)
                    XCTAssertEqual(try data.floats().map(\.bitPattern), want.map(\.bitPattern), "\(c.name): \(name)")
                }
            }
            if c.fanInFanOut {
                // GPT-2's Conv1D weights are (in, out): c_fc (32, 128) reads 32 of vera_A's 128 columns.
                let fc = try XCTUnwrap(adapter.modules.first { $0.path.hasSuffix("h.0.mlp.c_fc") })
                XCTAssertEqual(fc.a.shape, [8, 32])
                XCTAssertEqual(fc.b.shape, [128, 8])
                continue
            }
            // The MLP modules are sliced: up_proj reads 64 of vera_A's 128 columns, down_proj 64 of vera_B's 128 rows.
            let up = try XCTUnwrap(adapter.modules.first { $0.path.hasSuffix("layers.0.mlp.up_proj") })
            XCTAssertEqual(up.a.shape, [8, 64])
            XCTAssertEqual(up.b.shape, [128, 8])
            let down = try XCTUnwrap(adapter.modules.first { $0.path.hasSuffix("layers.0.mlp.down_proj") })
            XCTAssertEqual(down.a.shape, [8, 128])
            XCTAssertEqual(down.b.shape, [64, 8])
        }
    }

    func testConvertToPEFTGivesALoRAThatMergesToTheSameBits() throws {
        for c in try cases() {
            let out = TestPaths.scratch(self) + "/lora"
            var options = ConvertOptions(input: c.adapter, output: out)
            options.to = .peft
            options.base = c.base
            _ = try Converter.run(options)
            XCTAssertEqual(AdapterRegistry.format(of: out)?.id, .peft)
            let config = try JSONParser.parse(try FileSystem.readAll(out + "/adapter_config.json"))
            XCTAssertEqual(config["peft_type"]?.stringValue, "LORA")
            XCTAssertEqual(config["r"]?.intValue, 8)
            XCTAssertEqual(config["lora_alpha"]?.intValue, 8, "alpha = r: PEFT's scaling 1")
            // The written factors are PEFT's own products, bit for bit.
            let got = try TensorStore.open(out + "/adapter_model.safetensors")
            let want = try TensorStore.open(c.lora + "/adapter_model.safetensors")
            XCTAssertEqual(Set(got.entries.map(\.info.name)), Set(want.entries.map(\.info.name)), c.name)
            for e in want.entries { XCTAssertEqual(bits(got, e.info.name), bits(want, e.info.name), "\(c.name): \(e.info.name)") }
            // And merging the LoRA gives the VeRA merge's bits.
            let viaLoRA = try TensorStore.open(try merge(base: c.base, adapter: out))
            let viaVeRA = try TensorStore.open(try merge(base: c.base, adapter: c.adapter))
            for e in viaVeRA.entries { XCTAssertEqual(bits(viaLoRA, e.info.name), bits(viaVeRA, e.info.name), "\(c.name): \(e.info.name)") }
        }
    }

    func testSummaryListsModulesWithoutTheBase() throws {
        let s = try VeRAFormat.summarize(Self.vera("adapters/vera_f32_seeded"), options: AdapterOpenOptions())
        XCTAssertEqual(s.modules.count, 8)
        XCTAssertEqual(Set(s.modules.map(\.rank)), [8])
        let up = try XCTUnwrap(s.modules.first { $0.name == "model.layers.1.mlp.up_proj" })
        XCTAssertEqual(up.inferenceParameters, 128 + 8, "lambda_b (out) + lambda_d (r)")
        XCTAssertEqual(s.details["save_projection"], "false")
        XCTAssertEqual(s.details["projection_prng_key"], "20240")
        let saved = try VeRAFormat.summarize(Self.vera("adapters/vera_f32_saved"), options: AdapterOpenOptions())
        XCTAssertEqual(saved.details["vera_A"], "[8, 128] F32")
    }

    // MARK: bad inputs

    private func openError(_ adapter: String, base: String? = TestPaths.fixture("peft/models/llama_f32")) -> Error? {
        do {
            _ = try VeRAFormat.open(adapter, options: AdapterOpenOptions(base: try base.map { try TensorStore.open($0) }))
            return nil
        } catch { return error }
    }

    func testBadAdaptersAreRefusedWithOneLineErrors() throws {
        let expectations: [(String, [String])] = [
            ("missing_vera_A", ["save_projection is true", "base_model.vera_A"]),
            ("wrong_lambda_d", ["model.layers.0.self_attn.q_proj", "vera_lambda_d has 7 values", "r = 8"]),
            ("wrong_lambda_b", ["model.layers.1.mlp.up_proj", "vera_lambda_b has 129 values", "128 output features"]),
        ]
        for (name, phrases) in expectations {
            let path = Self.vera("bad/" + name)
            let error = try XCTUnwrap(openError(path), name)
            let text = String(describing: error)
            XCTAssertEqual(ExitStatus.of(error), .dataError, "\(name): \(text)")
            XCTAssertFalse(text.contains("\n"), text)
            XCTAssertTrue(text.hasPrefix(path), text)
            for p in phrases { XCTAssertTrue(text.contains(p), "\(name): \(text) lacks \(p)") }
        }
        let noBase = try XCTUnwrap(openError(Self.vera("adapters/vera_f32_saved"), base: nil))
        XCTAssertEqual(ExitStatus.of(noBase), .usage)
        XCTAssertTrue(String(describing: noBase).contains("--base"), String(describing: noBase))
    }

    func testBadConfigValuesAreNamed() throws {
        let dir = TestPaths.scratch(self)
        let src = Self.vera("adapters/vera_f32_saved")
        try FileSystem.copyFile(from: src + "/adapter_model.safetensors", to: dir + "/adapter_model.safetensors")
        let config = String(decoding: readBytes(src + "/adapter_config.json"), as: UTF8.self)
        for (from, to, phrase, status) in [("\"r\": 8", "\"r\": -1", "\"r\" must be a positive integer", ExitStatus.dataError),
                                           ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias \"all\"", .unsupported),
                                           ("\"save_projection\": true", "\"save_projection\": \"yes\"", "save_projection", .dataError)] {
            XCTAssertTrue(config.contains(from), from)
            writeFile(dir + "/adapter_config.json", Array(config.replacingOccurrences(of: from, with: to).utf8))
            let error = try XCTUnwrap(openError(dir), to)
            XCTAssertEqual(ExitStatus.of(error), status, String(describing: error))
            XCTAssertTrue(String(describing: error).contains(phrase), String(describing: error))
        }
    }

    /// The largest difference between two stored tensors: f32 in ulps of the tensor's largest
    /// magnitude (notes/formats.md: where W and the delta nearly cancel, ulps of the small
    /// stored value say nothing), bf16/f16 in representable steps of the stored values.
    static func maxError(_ a: [UInt8], _ b: [UInt8], dtype: DType) -> Double {
        switch dtype {
        case .f32:
            let x = a.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }, y = b.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let scale = (y.map { abs($0) }.max() ?? 0).ulp
            return zip(x, y).map { Double(abs($0 - $1)) / Double(scale) }.max() ?? 0
        case .bf16, .f16:
            func ordered(_ bits: UInt16) -> Int { bits & 0x8000 != 0 ? -Int(bits & 0x7FFF) : Int(bits) }
            let x = a.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }, y = b.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            return Double(zip(x, y).map { abs(ordered($0) - ordered($1)) }.max() ?? 0)
        default:
            return a == b ? 0 : .infinity
        }
    }
}
