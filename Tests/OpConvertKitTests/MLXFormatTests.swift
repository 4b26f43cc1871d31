import Foundation
import XCTest
@testable import OpConvertKit

/// mlx-lm adapters (fixtures/mlx, made by the real mlx-lm: fixtures/scripts/make_mlx_fixtures.py).
final class MLXFormatTests: XCTestCase {
    static func mlx(_ relative: String) -> String { TestPaths.fixture("mlx/" + relative) }
    static let llamaF32 = TestPaths.fixture("peft/models/llama_f32")
    static let llamaBF16 = TestPaths.fixture("peft/models/llama")

    /// A tensor's values in f32, by name.
    func floats(_ store: TensorStore, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> [Float] {
        guard let e = store.entry(named: name) else {
            XCTFail("no tensor \(name) in \(store.path)", file: file, line: line)
            return []
        }
        return try TensorData.stored(store, e).floats()
    }

    func testProbeTakesMLXDirectoriesBeforePEFT() {
        XCTAssertTrue(AdapterRegistry.format(of: Self.mlx("adapters/llama_lora")) == MLXFormat.self)
        XCTAssertTrue(AdapterRegistry.format(of: Self.mlx("adapters/llama_full")) == MLXFormat.self)
        // No config: still mlx-lm's (so the message says what is missing), not "not an adapter".
        XCTAssertTrue(AdapterRegistry.format(of: Self.mlx("bad/missing_config")) == MLXFormat.self)
        XCTAssertTrue(AdapterRegistry.format(of: TestPaths.fixture("peft/adapters/llama_lora")) == PEFTFormat.self)
        XCTAssertFalse(MLXFormat.probe(Self.llamaF32))
        XCTAssertTrue(AdapterRegistry.writable.contains(.mlx))
    }

    func testOpenTransposesTheFactorsIntoPEFTsOrientation() throws {
        let path = Self.mlx("adapters/llama_lora")
        let adapter = try AdapterRegistry.open(path)
        XCTAssertEqual(adapter.kind, .mlxLora)
        XCTAssertEqual(adapter.modules.count, 6)
        XCTAssertFalse(adapter.usesDoRA)
        let store = try TensorStore.open(path + "/adapters.safetensors")
        let name = "model.layers.0.mlp.down_proj"
        let m = try XCTUnwrap(adapter.modules.first { $0.path == name })
        XCTAssertEqual(m.rank, 4)
        XCTAssertEqual(m.scaling, 20.0)
        XCTAssertEqual(m.a.shape, [4, 128])   // lora_a is [in, r] = [128, 4]
        XCTAssertEqual(m.b.shape, [64, 4])    // lora_b is [r, out] = [4, 64]
        let loraA = try floats(store, name + ".lora_a"), loraB = try floats(store, name + ".lora_b")
        let a = try m.a.floats(), b = try m.b.floats()
        for i in 0..<128 { for j in 0..<4 { XCTAssertEqual(a[j * 128 + i], loraA[i * 4 + j]) } }
        for i in 0..<4 { for j in 0..<64 { XCTAssertEqual(b[j * 4 + i], loraB[i * 64 + j]) } }
        XCTAssertTrue(loraB.contains { $0 != 0 })

        let dora = try AdapterRegistry.open(Self.mlx("adapters/llama_dora"))
        XCTAssertEqual(dora.kind, .mlxDora)
        XCTAssertEqual(dora.modules.count, 7)
        XCTAssertTrue(dora.modules.allSatisfy { $0.magnitude?.shape == [$0.b.shape[0]] && $0.scaling == 2.0 })
    }

    /// opconvert's merge against mlx_lm.fuse (fused tensors of the adapted modules; every
    /// other tensor must stay the base's, byte for byte). Tolerances are in ulps of the
    /// tensor's largest magnitude: fuse rounds the delta to the weight dtype before adding it
    /// (two roundings; opconvert rounds once), and f32 sums differ by order.
    func testMergeMatchesMLXFuse() throws {
        let cases: [(adapter: String, base: String, expected: String, ulps: Float)] = [
            ("llama_lora", Self.llamaF32, "llama_lora_f32", 4),
            ("llama_dora", Self.llamaF32, "llama_dora_f32", 8),
            ("llama_lora", Self.llamaBF16, "llama_lora_bf16", 1),
            // mlx_lm.fuse leaves DoRA weights in f32 here (m is f32); opconvert keeps bf16.
            ("llama_dora", Self.llamaBF16, "llama_dora_bf16", 1),
            // mlx-lm's LoRAEmbedding (delta = scale·lora_a·lora_b, in the weight's [vocab, dim]
            // orientation) and a top-level lm_head.
            ("llama_lora_embed", Self.llamaF32, "llama_lora_embed_f32", 4),
            ("llama_lora_embed", Self.llamaBF16, "llama_lora_embed_bf16", 1),
        ]
        for c in cases {
            let out = TestPaths.scratch(self) + "/merged"
            _ = try Merger.run(MergeOptions(base: c.base, adapters: [(Self.mlx("adapters/" + c.adapter), 1)], output: out, showProgress: false))
            let got = try TensorStore.open(out), base = try TensorStore.open(c.base)
            let want = try TensorStore.open(Self.mlx("expected/\(c.expected)/fused.safetensors"))
            let changed = Set(want.entries.map(\.info.name))
            XCTAssertEqual(Set(got.entries.map(\.info.name)), Set(base.entries.map(\.info.name)), c.expected)
            for e in base.entries {
                let g = try XCTUnwrap(got.entry(named: e.info.name))
                XCTAssertEqual(g.info.dtype, e.info.dtype, "\(c.expected): \(e.info.name) keeps the base dtype")
                if !changed.contains(e.info.name) {
                    XCTAssertEqual(Array(got.data(g)), Array(base.data(e)), "\(c.expected): \(e.info.name) should be untouched")
                }
            }
            var changedWeights = 0
            for w in want.entries {
                var reference = try TensorData.stored(want, w).floats()
                let g = try XCTUnwrap(got.entry(named: w.info.name))
                if g.info.dtype == .bf16 { reference = reference.map { Self.roundToBF16($0) } }
                let values = try TensorData.stored(got, g).floats()
                let largest = reference.map { abs($0) }.max() ?? 0
                let ulp = g.info.dtype == .bf16 ? Self.bf16ULP(largest) : largest.ulp
                let worst = zip(values, reference).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThanOrEqual(worst, c.ulps * ulp, "\(c.expected): \(w.info.name) vs mlx_lm.fuse")
                if w.info.name.hasSuffix(".weight") {
                    changedWeights += 1
                    // The adapter changed it: the comparison is not vacuous.
                    XCTAssertNotEqual(Array(got.data(g)), Array(base.data(try XCTUnwrap(base.entry(named: w.info.name)))), w.info.name)
                }
            }
            XCTAssertEqual(changedWeights, ["llama_lora": 6, "llama_dora": 7, "llama_lora_embed": 3][c.adapter], c.expected)
        }
    }

    static func roundToBF16(_ x: Float) -> Float {
        let bits = x.bitPattern
        let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000
        return Float(bitPattern: rounded)
    }

    static func bf16ULP(_ x: Float) -> Float { Float(sign: .plus, exponent: x.exponent - 7, significand: 1) }

    /// fine_tune_type full: the saved tensors replace the base's, as mlx-lm's load_adapters does.
    func testFullFineTuneReplacesTensors() throws {
        let path = Self.mlx("adapters/llama_full")
        let out = TestPaths.scratch(self) + "/merged"
        _ = try Merger.run(MergeOptions(base: Self.llamaBF16, adapters: [(path, 1)], output: out, showProgress: false))
        let got = try TensorStore.open(out), base = try TensorStore.open(Self.llamaBF16)
        let adapter = try TensorStore.open(path + "/adapters.safetensors")
        XCTAssertEqual(adapter.entries.count, 13)
        for e in base.entries {
            let g = try XCTUnwrap(got.entry(named: e.info.name))
            if let a = adapter.entry(named: e.info.name) {
                XCTAssertEqual(Array(got.data(g)), Array(adapter.data(a)), "\(e.info.name) is the adapter's")
                XCTAssertNotEqual(Array(adapter.data(a)), Array(base.data(e)), e.info.name)
            } else {
                XCTAssertEqual(Array(got.data(g)), Array(base.data(e)), "\(e.info.name) should be untouched")
            }
        }
        XCTAssertThrowsError(try PEFTFormat.write(try AdapterRegistry.open(path), to: TestPaths.scratch(self) + "/p", options: AdapterWriteOptions())) {
            XCTAssertEqual(ExitStatus.of($0), .unsupported)
        }
    }

    /// Converts with the library's convert (what `opconvert convert --to` runs).
    func convert(_ input: String, to format: AdapterFormatID, base: String? = nil) throws -> String {
        let out = TestPaths.scratch(self) + "/\(format.rawValue)"
        var options = ConvertOptions(input: input, output: out, showProgress: false)
        options.to = format
        options.base = base
        _ = try Converter.run(options)
        return out
    }

    func json(_ path: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    func assertSameTensors(_ a: String, _ b: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let x = try TensorStore.open(a), y = try TensorStore.open(b)
        XCTAssertEqual(Set(x.entries.map(\.info.name)), Set(y.entries.map(\.info.name)), file: file, line: line)
        for e in x.entries {
            let f = try XCTUnwrap(y.entry(named: e.info.name))
            XCTAssertEqual(e.info.dtype, f.info.dtype, e.info.name, file: file, line: line)
            XCTAssertEqual(e.info.shape, f.info.shape, e.info.name, file: file, line: line)
            XCTAssertEqual(Array(x.data(e)), Array(y.data(f)), "\(e.info.name) bytes", file: file, line: line)
        }
    }

    func testMLXToPEFTToMLXIsBitExact() throws {
        for name in ["llama_lora", "llama_dora"] {
            let input = Self.mlx("adapters/" + name)
            let peft = try convert(input, to: .peft)
            let peftConfig = try json(peft + "/adapter_config.json")
            let original = try json(input + "/adapter_config.json")
            let params = try XCTUnwrap(original["lora_parameters"] as? [String: Any])
            XCTAssertEqual(peftConfig["r"] as? Int, params["rank"] as? Int)
            // PEFT's s = lora_alpha / r gives mlx-lm's scale back.
            XCTAssertEqual((peftConfig["lora_alpha"] as? Double).map { $0 / Double(params["rank"] as! Int) }, params["scale"] as? Double)
            XCTAssertEqual(peftConfig["use_dora"] as? Bool, name == "llama_dora")
            let back = try convert(peft, to: .mlx, base: Self.llamaF32)
            try assertSameTensors(back + "/adapters.safetensors", input + "/adapters.safetensors")
            let config = try json(back + "/adapter_config.json")
            let backParams = try XCTUnwrap(config["lora_parameters"] as? [String: Any])
            XCTAssertEqual(config["fine_tune_type"] as? String, original["fine_tune_type"] as? String)
            XCTAssertEqual(config["num_layers"] as? Int, original["num_layers"] as? Int)
            XCTAssertEqual(backParams["rank"] as? Int, params["rank"] as? Int)
            XCTAssertEqual(backParams["scale"] as? Double, params["scale"] as? Double)
            if let keys = params["keys"] as? [String] {
                XCTAssertEqual(Set(try XCTUnwrap(backParams["keys"] as? [String])), Set(keys))
            }
        }
    }

    func testPEFTToMLXToPEFTIsBitExact() throws {
        for name in ["llama_lora", "llama_dora"] {
            let input = TestPaths.fixture("peft/adapters/" + name)
            let mlx = try convert(input, to: .mlx, base: Self.llamaF32)
            let mlxConfig = try json(mlx + "/adapter_config.json")
            let params = try XCTUnwrap(mlxConfig["lora_parameters"] as? [String: Any])
            let original = try json(input + "/adapter_config.json")
            XCTAssertEqual(params["rank"] as? Int, original["r"] as? Int)
            XCTAssertEqual(params["scale"] as? Double, (original["lora_alpha"] as! Double) / Double(original["r"] as! Int))
            XCTAssertEqual(mlxConfig["fine_tune_type"] as? String, name == "llama_dora" ? "dora" : "lora")
            // Both layers of the 2-layer Llama.
            XCTAssertEqual(mlxConfig["num_layers"] as? Int, 2)
            let back = try convert(mlx, to: .peft)
            try assertSameTensors(back + "/adapter_model.safetensors", input + "/adapter_model.safetensors")
            let config = try json(back + "/adapter_config.json")
            XCTAssertEqual(config["r"] as? Int, original["r"] as? Int)
            XCTAssertEqual(config["lora_alpha"] as? Double, original["lora_alpha"] as? Double)
            XCTAssertEqual(config["use_dora"] as? Bool, original["use_dora"] as? Bool)
        }
    }

    /// Keys outside the blocks (the embedding, lm_head) are written in full; MLX -> MLX is
    /// bit-exact (PEFT's writer does not take embedding LoRAs).
    func testTopLevelKeysRoundTrip() throws {
        let input = Self.mlx("adapters/llama_lora_embed")
        let adapter = try AdapterRegistry.open(input)
        XCTAssertEqual(adapter.modules.first { $0.path == "model.embed_tokens" }?.isEmbedding, true)
        XCTAssertEqual(adapter.modules.first { $0.path == "lm_head" }?.isEmbedding, false)
        let back = try convert(input, to: .mlx, base: Self.llamaF32)
        try assertSameTensors(back + "/adapters.safetensors", input + "/adapters.safetensors")
        let config = try json(back + "/adapter_config.json")
        XCTAssertEqual(config["num_layers"] as? Int, 1)
        let keys = try XCTUnwrap((config["lora_parameters"] as? [String: Any])?["keys"] as? [String])
        XCTAssertEqual(Set(keys), ["model.embed_tokens", "lm_head", "self_attn.o_proj"])
    }

    /// Modules only in some blocks: num_layers counts from the lowest adapted block to the
    /// base's last (mlx-lm adapts the last num_layers blocks).
    func testNumLayersCountsFromTheBasesLastBlock() throws {
        var adapter = try AdapterRegistry.open(TestPaths.fixture("peft/adapters/llama_lora"))
        adapter.modules.removeAll { $0.path.hasPrefix("model.layers.0.") }
        let out = TestPaths.scratch(self) + "/last"
        _ = try MLXFormat.write(adapter, to: out, options: AdapterWriteOptions(base: try TensorStore.open(Self.llamaF32)))
        XCTAssertEqual(try json(out + "/adapter_config.json")["num_layers"] as? Int, 1)
        // Without --base the block count is a guess (the adapter's last block), said so.
        let (_, warnings) = try Warnings.collect { try MLXFormat.write(adapter, to: TestPaths.scratch(self) + "/guess", options: AdapterWriteOptions()) }
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.first?.contains("no --base: assuming the model has 2 blocks") ?? false, "\(warnings)")
        adapter.modules.removeAll { $0.path.hasPrefix("model.layers.1.") }
        XCTAssertThrowsError(try MLXFormat.write(adapter, to: TestPaths.scratch(self) + "/none", options: AdapterWriteOptions())) {
            XCTAssertTrue("\($0)".contains("no low-rank modules"), "\($0)")
        }
    }

    /// A power-of-two ratio of scalings folds into lora_b exactly (the merge is bit-identical);
    /// any other ratio is refused.
    func testPerModuleScalings() throws {
        var adapter = try AdapterRegistry.open(Self.mlx("adapters/llama_lora"))
        adapter.modules[0].scaling = 5.0   // 20 / 4
        let out = TestPaths.scratch(self) + "/folded"
        _ = try MLXFormat.write(adapter, to: out, options: AdapterWriteOptions(base: try TensorStore.open(Self.llamaF32)))
        let written = try AdapterRegistry.open(out)
        XCTAssertTrue(written.modules.allSatisfy { $0.scaling == 20 })
        let b0 = try adapter.modules[0].b.floats()
        let folded = try XCTUnwrap(written.modules.first { $0.path == adapter.modules[0].path })
        XCTAssertEqual(try folded.b.floats(), b0.map { $0 * 0.25 })

        adapter.modules[0].scaling = 20.0 / 3
        XCTAssertThrowsError(try MLXFormat.write(adapter, to: TestPaths.scratch(self) + "/r", options: AdapterWriteOptions())) {
            XCTAssertEqual(ExitStatus.of($0), .unsupported)
            XCTAssertTrue("\($0)".contains("not a power of two"), "\($0)")
            XCTAssertTrue("\($0)".contains(adapter.modules[0].path), "\($0)")
        }
    }

    func testWriteRefusals() throws {
        let base = try TensorStore.open(Self.llamaF32)
        // Per-module ranks: mlx-lm has one rank.
        let patterns = try AdapterRegistry.open(TestPaths.fixture("peft/adapters/llama_rslora_patterns"))
        XCTAssertGreaterThan(Set(patterns.modules.map(\.rank)).count, 1)
        XCTAssertThrowsError(try MLXFormat.write(patterns, to: TestPaths.scratch(self) + "/p", options: AdapterWriteOptions(base: base))) {
            XCTAssertTrue("\($0)".contains("lora_parameters.rank is one for all modules"), "\($0)")
        }
        // LoRA biases have no place in mlx-lm adapters.
        let bias = try AdapterRegistry.open(TestPaths.fixture("peft/adapters/llama_lora_bias"))
        XCTAssertThrowsError(try MLXFormat.write(bias, to: TestPaths.scratch(self) + "/b", options: AdapterWriteOptions(base: base))) {
            XCTAssertTrue("\($0)".contains("LoRA bias"), "\($0)")
        }
        // A DoRA module missing from an adapted block would be re-created with m = ‖W‖.
        var dora = try AdapterRegistry.open(TestPaths.fixture("peft/adapters/llama_dora"))
        let dropped = dora.modules.removeFirst().path
        XCTAssertThrowsError(try MLXFormat.write(dora, to: TestPaths.scratch(self) + "/d", options: AdapterWriteOptions(base: base))) {
            XCTAssertTrue("\($0)".contains("DoRA module \(dropped) is missing"), "\($0)")
        }
    }

    func testBadInputsAreOneLineErrors() throws {
        let cases: [(String, ExitStatus, String)] = [
            ("bad/missing_config", .dataError, "no adapter_config.json next to adapters.safetensors"),
            ("bad/rank_mismatch", .dataError, "module model.layers.1.self_attn.q_proj: lora_a has shape [64, 4] and lora_b [3, 64]: their ranks (4 and 3) differ"),
            ("bad/unknown_type", .dataError, "fine_tune_type \"qlora\" is not one mlx-lm knows (lora, dora, full)"),
        ]
        for (path, status, message) in cases {
            XCTAssertThrowsError(try AdapterRegistry.open(Self.mlx(path)), path) {
                XCTAssertEqual(ExitStatus.of($0), status, path)
                XCTAssertTrue("\($0)".contains(message), "\(path): \($0)")
                XCTAssertFalse("\($0)".contains("\n"), path)
            }
        }
        // mlx-lm's config without its weights file: said so, not taken for a PEFT adapter.
        let noWeights = TestPaths.scratch(self) + "/no_weights"
        try FileManager.default.createDirectory(atPath: noWeights, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.mlx("adapters/llama_lora/adapter_config.json"), toPath: noWeights + "/adapter_config.json")
        XCTAssertTrue(AdapterRegistry.format(of: noWeights) == MLXFormat.self)
        XCTAssertThrowsError(try AdapterRegistry.open(noWeights)) {
            XCTAssertEqual(ExitStatus.of($0), .dataError)
            XCTAssertTrue("\($0)".hasSuffix("no adapters.safetensors"), "\($0)")
        }
        // A 4-bit mlx-lm base (mlx_lm.convert -q): merging would mean re-quantizing.
        let quantized = Self.mlx("models/llama_q4")
        XCTAssertThrowsError(try Merger.run(MergeOptions(base: quantized, adapters: [(Self.mlx("adapters/llama_lora"), 1)],
                                                         output: TestPaths.scratch(self) + "/q", showProgress: false))) {
            XCTAssertEqual(ExitStatus.of($0), .unsupported)
            XCTAssertTrue("\($0)".contains("quantized by mlx-lm"), "\($0)")
        }
    }
}
