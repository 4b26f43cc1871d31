import XCTest
@testable import OpConvertKit

/// Mapping a LLaMA-family model directory's tensors against its config.json.
final class TransformerWeightsTests: XCTestCase {
    func testFixtureModelsOpen() throws {
        let llama = try TransformerWeights.open(TestPaths.fixture("llama/models/llama"))
        XCTAssertEqual(llama.store.layout, .singleFile)
        // embed + 2 layers x 9 (no biases) + norm + lm_head
        XCTAssertEqual(TransformerWeights.expectedTensors(llama.config).count, 1 + 2 * 9 + 2)
        XCTAssertEqual(llama.outputProjectionName, "lm_head.weight")
        XCTAssertNil(try llama.floats(.qBias, layer: 0))
        XCTAssertEqual(try llama.floats(.k, layer: 1)?.count, 16 * 32)

        let qwen = try TransformerWeights.open(TestPaths.fixture("llama/models/qwen2"))
        XCTAssertEqual(qwen.store.layout, .sharded(indexName: "model.safetensors.index.json"))
        XCTAssertGreaterThan(qwen.store.files.count, 1)
        XCTAssertEqual(TransformerWeights.expectedTensors(qwen.config).count, 1 + 2 * 12 + 2)
        XCTAssertEqual(try qwen.floats(.vBias, layer: 1)?.count, 16)
        XCTAssertNil(try qwen.floats(.oBias, layer: 1))

        let mistral = try TransformerWeights.open(TestPaths.fixture("llama/models/mistral"))
        XCTAssertFalse(mistral.store.contains("lm_head.weight"))
        XCTAssertEqual(mistral.outputProjectionName, "model.embed_tokens.weight")
        XCTAssertEqual(try mistral.floats(mistral.outputProjectionName).count, 96 * 32)
    }

    // MARK: modified copies of the llama fixture

    /// The llama fixture's tensors as (spec, bytes), f32.
    func llamaTensors() throws -> [(TensorSpec, [UInt8])] {
        let store = try TensorStore.open(TestPaths.fixture("llama/models/llama"))
        return store.entries.map { e in
            (TensorSpec(name: e.info.name, dtype: e.info.dtype, shape: e.info.shape), [UInt8](store.data(e)))
        }
    }

    func writeModel(_ tensors: [(TensorSpec, [UInt8])], config: String = "llama") throws -> String {
        let dir = TestPaths.scratch(self)
        writeFile(dir + "/config.json", readBytes(TestPaths.fixture("llama/models/\(config)/config.json")))
        try SafetensorsWriter.write(path: dir + "/model.safetensors", tensors: tensors, metadata: nil)
        return dir
    }

    func assertOpenFails(_ dir: String, status: ExitStatus, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try TransformerWeights.open(dir), file: file, line: line) { error in
            XCTAssertEqual(ExitStatus.of(error), status, "\(error)", file: file, line: line)
            for m in mentions { XCTAssertTrue("\(error)".contains(m), "\(error) does not mention \(m)", file: file, line: line) }
        }
    }

    func testMissingTensorIsNamed() throws {
        let dir = try writeModel(try llamaTensors().filter { $0.0.name != "model.layers.1.mlp.up_proj.weight" })
        assertOpenFails(dir, status: .dataError, mentions: ["missing tensor model.layers.1.mlp.up_proj.weight"])
        let noHead = try writeModel(try llamaTensors().filter { $0.0.name != "lm_head.weight" })
        assertOpenFails(noHead, status: .dataError, mentions: ["lm_head.weight"])
    }

    func testWrongShapeNamesTensorAndBothShapes() throws {
        var tensors = try llamaTensors()
        let i = tensors.firstIndex { $0.0.name == "model.layers.0.self_attn.k_proj.weight" }!
        tensors[i] = (TensorSpec(name: tensors[i].0.name, dtype: .f32, shape: [32, 16]), tensors[i].1)
        assertOpenFails(try writeModel(tensors), status: .dataError,
                        mentions: ["model.layers.0.self_attn.k_proj.weight", "[32, 16]", "expected [16, 32]"])
    }

    func testNonFloatTensorIsUnsupported() throws {
        var tensors = try llamaTensors()
        let i = tensors.firstIndex { $0.0.name == "model.norm.weight" }!
        tensors[i] = (TensorSpec(name: "model.norm.weight", dtype: .i32, shape: [32]), tensors[i].1)
        assertOpenFails(try writeModel(tensors), status: .unsupported, mentions: ["model.norm.weight", "I32"])
    }

    func testUnexpectedTensorsAreRefusedButRopeBuffersIgnored() throws {
        var tensors = try llamaTensors()
        // a q_proj bias in a model whose config says attention_bias false: transformers would drop it
        tensors.append((TensorSpec(name: "model.layers.0.self_attn.q_proj.bias", dtype: .f32, shape: [32]), [Float](repeating: 1, count: 32).bytes))
        assertOpenFails(try writeModel(tensors), status: .dataError, mentions: ["model.layers.0.self_attn.q_proj.bias"])

        var withRope = try llamaTensors()
        withRope.append((TensorSpec(name: "model.layers.0.self_attn.rotary_emb.inv_freq", dtype: .f32, shape: [4]), [Float](repeating: 1, count: 4).bytes))
        XCTAssertNoThrow(try TransformerWeights.open(try writeModel(withRope)))
    }

    func testTiedModelIgnoresAnLMHeadCopy() throws {
        let store = try TensorStore.open(TestPaths.fixture("llama/models/mistral"))
        var tensors = store.entries.map { e in (TensorSpec(name: e.info.name, dtype: e.info.dtype, shape: e.info.shape), [UInt8](store.data(e))) }
        let embed = tensors.first { $0.0.name == "model.embed_tokens.weight" }!
        tensors.append((TensorSpec(name: "lm_head.weight", dtype: .f32, shape: embed.0.shape), embed.1))
        let w = try TransformerWeights.open(try writeModel(tensors, config: "mistral"))
        XCTAssertEqual(w.outputProjectionName, "model.embed_tokens.weight")
    }

    func testHalfPrecisionWeightsReadAsF32() throws {
        let original = try TransformerWeights.open(TestPaths.fixture("llama/models/llama"))
        let values = try original.floats("model.layers.0.mlp.down_proj.weight")
        var tensors = try llamaTensors()
        let i = tensors.firstIndex { $0.0.name == "model.layers.0.mlp.down_proj.weight" }!
        var bf16 = [UInt8](repeating: 0, count: values.count * 2)
        values.withUnsafeBufferPointer { src in
            bf16.withUnsafeMutableBytes { DTypeConversion.encode(src.baseAddress!, to: $0.baseAddress!, .bf16, count: values.count) }
        }
        tensors[i] = (TensorSpec(name: tensors[i].0.name, dtype: .bf16, shape: tensors[i].0.shape), bf16)
        let w = try TransformerWeights.open(try writeModel(tensors))
        let got = try w.floats("model.layers.0.mlp.down_proj.weight")
        XCTAssertEqual(got.count, values.count)
        var changed = 0
        for (g, v) in zip(got, values) {
            XCTAssertEqual(g, v, accuracy: abs(v) * 0.004 + 1e-30)  // bf16 keeps 8 significant bits
            XCTAssertEqual(g.bitPattern & 0xFFFF, 0)
            if g != v { changed += 1 }
        }
        XCTAssertGreaterThan(changed, 0, "the values went through bf16")
    }
}
