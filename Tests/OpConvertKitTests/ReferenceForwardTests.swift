import XCTest
@testable import OpConvertKit

/// The f64 reference forward against transformers' logits and losses (fixtures/llama).
final class ReferenceForwardTests: XCTestCase {
    func floats(_ file: SafetensorsFile, _ name: String) throws -> (values: [Float], shape: [Int]) {
        let t = try file.tensor(named: name)
        XCTAssertEqual(t.dtype, .f32)
        let raw = file.data(t)
        return ((0..<t.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }, t.shape)
    }

    func json(_ relative: String) throws -> JSONValue { try JSONParser.parse(readBytes(TestPaths.fixture("llama/" + relative))) }

    func testBaseLogitsMatchTransformers() throws {
        let data = try TokenData.read(TestPaths.fixture("llama/data/train.safetensors"), vocabSize: 96)
        for model in ["llama", "mistral", "qwen2"] {
            var forward = ReferenceForward(weights: try TransformerWeights.open(TestPaths.fixture("llama/models/\(model)")))
            let got = try forward.logits(data)
            let expected = try floats(try SafetensorsFile(path: TestPaths.fixture("llama/expected/\(model)/base.safetensors")), "logits").values
            XCTAssertEqual(got.count, expected.count)
            let scale = expected.map { abs(Double($0)) }.max()!
            let worst = zip(got, expected).map { abs($0 - Double($1)) }.max()!
            XCTAssertLessThanOrEqual(worst / scale, 1e-5, "\(model): max |diff| \(worst), max |logit| \(scale)")
            // and the loss transformers reported for the same batch
            let loss = TokenCrossEntropy.reference(logits: got, data: data, vocabSize: 96)
            let reported = try json("expected/\(model)/base.json")["loss"]!.doubleValue!
            XCTAssertEqual(loss, reported, accuracy: 1e-5 * reported, model)
        }
    }

    /// LoRA factors of a PEFT adapter directory, keyed by module path.
    func peftAdapter(_ dir: String) throws -> [String: ReferenceForward.LoRA] {
        let config = try JSONParser.parse(readBytes(dir + "/adapter_config.json"))
        let r = config["r"]!.intValue!, alpha = config["lora_alpha"]!.doubleValue!
        let file = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        var out: [String: ReferenceForward.LoRA] = [:]
        for t in file.tensors where t.name.hasSuffix(".lora_A.weight") {
            let module = String(t.name.dropFirst("base_model.model.".count).dropLast(".lora_A.weight".count))
            let a = try floats(file, t.name).values.map(Double.init)
            let b = try floats(file, t.name.replacingOccurrences(of: ".lora_A.", with: ".lora_B.")).values.map(Double.init)
            out[module] = ReferenceForward.LoRA(a: a, b: b, rank: r, scale: alpha / Double(r))
        }
        return out
    }

    /// With the initial and final adapters of every training case, the reference gives the
    /// full-data losses PEFT (and the plain-PyTorch OP-LoRA) reported.
    func testAdapterLossesMatchTheTrainingFixtures() throws {
        let data = try TokenData.read(TestPaths.fixture("llama/data/train.safetensors"), vocabSize: 96)
        let cases = try json("cases.json")["cases"]!.arrayValue!
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let name = c["name"]!.stringValue!
            let weights = try TransformerWeights.open(TestPaths.fixture("llama/" + c["model"]!.stringValue!))
            let losses = try json(c["losses"]!.stringValue!)
            XCTAssertGreaterThanOrEqual(losses["losses"]!.arrayValue!.count, 20)
            var checks: [(String, String)] = [("final_full_loss", c["final_materialized"]?.stringValue ?? c["final"]!.stringValue!)]
            if c["method"]!.stringValue! == "lora" { checks.append(("init_full_loss", c["init"]!.stringValue!)) }
            for (key, dir) in checks {
                let adapters = try peftAdapter(TestPaths.fixture("llama/" + dir))
                XCTAssertEqual(Set(adapters.keys.map { String($0.split(separator: ".").last!) }),
                               Set(c["target_modules"]!.arrayValue!.compactMap(\.stringValue)), name)
                var forward = ReferenceForward(weights: weights, adapters: adapters)
                let loss = TokenCrossEntropy.reference(logits: try forward.logits(data), data: data, vocabSize: 96)
                let expected = losses[key]!.doubleValue!
                XCTAssertEqual(loss, expected, accuracy: 1e-5 * expected, "\(name) \(key)")
            }
        }
    }
}

/// The OP-LoRA training fixture follows docs/op-checkpoint.md: opconvert's own reader and
/// materializer turn its final checkpoint into the adapter the fixture script materialized.
final class LlamaOPFixtureTests: XCTestCase {
    func testFinalCheckpointMaterializesToTheStoredAdapter() throws {
        let dir = TestPaths.fixture("llama/expected/op_lora_llama_qv")
        for base in [nil, TestPaths.fixture("llama/models/llama")] {  // shapes from the metadata, or from the base
            let out = TestPaths.scratch(self) + "/adapter"
            _ = try Materializer.run(MaterializeOptions(checkpoint: dir + "/final", output: out, base: base))
            let got = try TensorStore.open(out + "/adapter_model.safetensors")
            let want = try TensorStore.open(dir + "/final_materialized/adapter_model.safetensors")
            XCTAssertEqual(got.entries.map(\.info.name).sorted(), want.entries.map(\.info.name).sorted())
            XCTAssertEqual(want.tensorCount, 8)
            for w in want.entries {
                let g = try XCTUnwrap(got.entry(named: w.info.name))
                XCTAssertEqual(g.info.shape, w.info.shape, w.info.name)
                let gv = try TensorData.stored(got, g).floats(), wv = try TensorData.stored(want, w).floats()
                let scale = wv.map { abs($0) }.max()!
                let worst = zip(gv, wv).map { abs($0 - $1) }.max()!
                XCTAssertLessThanOrEqual(worst, 1e-6 * scale, w.info.name)
            }
        }
        let initial = try OPCheckpoint(path: dir + "/init")
        XCTAssertEqual(initial.modules.count, 4)
        XCTAssertEqual(initial.config.hidden, 16)
        XCTAssertEqual(initial.recordedShapes["model.layers.0.self_attn.v_proj"], [16, 32])
    }
}
