import XCTest
@testable import OpConvertKit

/// config.json of LLaMA-family models: fixture configs written by transformers 5.23
/// (fixtures/scripts/make_llama_train_fixtures.py), the defaults, and every refusal.
final class TransformerConfigTests: XCTestCase {
    static func fixtureJSON(_ relative: String) throws -> JSONValue {
        try JSONParser.parse(readBytes(TestPaths.fixture("llama/" + relative)))
    }

    func parse(_ value: JSONValue) throws -> TransformerConfig { try TransformerConfig.parse(value, path: "config.json") }

    /// Asserts that parsing fails with `status`, and that the message names `field`.
    func assertRefused(_ value: JSONValue, status: ExitStatus, field: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(value), file: file, line: line) { error in
            XCTAssertEqual(ExitStatus.of(error), status, "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(field), "\(error) does not name \(field)", file: file, line: line)
            XCTAssertTrue("\(error)".hasPrefix("config.json: "), "\(error)", file: file, line: line)
        }
    }

    func testLlamaFixtureConfig() throws {
        let c = try TransformerConfig.read(TestPaths.fixture("llama/models/llama"))
        XCTAssertEqual(c.architecture, .llama)
        XCTAssertEqual([c.vocabSize, c.hiddenSize, c.intermediateSize, c.layerCount, c.headCount, c.kvHeadCount, c.headDim],
                       [96, 32, 64, 2, 4, 2, 8])
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertEqual(c.ropeScaling, .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64))
        XCTAssertEqual(c.maxPositionEmbeddings, 128)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertFalse(c.qkvBias || c.outputBias || c.mlpBias)
        XCTAssertNil(c.slidingWindow)
        XCTAssertEqual(c.torchDType, "float32")
        XCTAssertTrue(c.path.hasSuffix("models/llama/config.json"))
    }

    func testMistralFixtureConfig() throws {
        let c = try TransformerConfig.read(TestPaths.fixture("llama/models/mistral/config.json"))
        XCTAssertEqual(c.architecture, .mistral)
        XCTAssertEqual(c.ropeTheta, 1_000_000)
        XCTAssertEqual(c.ropeScaling, RopeScaling.none)
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(c.slidingWindow, 32)
        XCTAssertFalse(c.qkvBias || c.outputBias || c.mlpBias)
        XCTAssertNoThrow(try c.checkSequenceLength(16))
        XCTAssertNoThrow(try c.checkSequenceLength(32))
        XCTAssertThrowsError(try c.checkSequenceLength(33)) { error in
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
            XCTAssertTrue("\(error)".contains("sliding_window") && "\(error)".contains("33"), "\(error)")
        }
    }

    func testQwen2FixtureConfig() throws {
        let c = try TransformerConfig.read(TestPaths.fixture("llama/models/qwen2"))
        XCTAssertEqual(c.architecture, .qwen2)
        XCTAssertTrue(c.qkvBias)
        XCTAssertFalse(c.outputBias || c.mlpBias)
        XCTAssertNil(c.slidingWindow, "use_sliding_window is false")
        XCTAssertNoThrow(try c.checkSequenceLength(100_000))
    }

    func testQwen2SlidingWindowFollowsUseSlidingWindowAndLayerTypes() throws {
        let base = try Self.fixtureJSON("models/qwen2/config.json")
        let on = base.setting("use_sliding_window", to: .bool(true)).setting("sliding_window", to: .int(8))
        // layer_types say full attention everywhere: no window even with use_sliding_window
        XCTAssertNil(try parse(on).slidingWindow)
        let windowed = on.setting("layer_types", to: .array([.string("full_attention"), .string("sliding_attention")]))
        XCTAssertEqual(try parse(windowed).slidingWindow, 8)
        XCTAssertThrowsError(try parse(windowed).checkSequenceLength(16))
        // without layer_types: layers from max_window_layers on have the window
        var noTypes = on
        if case var .object(m) = noTypes { m.removeAll { $0.0 == "layer_types" }; noTypes = .object(m) }
        XCTAssertEqual(try parse(noTypes.setting("max_window_layers", to: .int(1))).slidingWindow, 8)
        XCTAssertNil(try parse(noTypes.setting("max_window_layers", to: .int(2))).slidingWindow)
        assertRefused(windowed.setting("layer_types", to: .array([.string("full_attention"), .string("chunked_attention")])),
                      status: .unsupported, field: "layer_types")
        assertRefused(on.setting("layer_types", to: .array([.string("full_attention")])), status: .dataError, field: "layer_types")
    }

    func testDefaultsOfAMinimalLegacyConfig() throws {
        let minimal: JSONValue = .object([
            ("model_type", .string("llama")), ("vocab_size", .int(10)), ("hidden_size", .int(16)),
            ("intermediate_size", .int(24)), ("num_hidden_layers", .int(1)), ("num_attention_heads", .int(4)),
        ])
        let c = try parse(minimal)
        XCTAssertEqual(c.architecture, .llama)
        XCTAssertEqual(c.kvHeadCount, 4)
        XCTAssertEqual(c.headDim, 4)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertEqual(c.ropeScaling, RopeScaling.none)
        XCTAssertEqual(c.rmsNormEps, 1e-6)
        XCTAssertEqual(c.maxPositionEmbeddings, 2048)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertNil(c.torchDType)
        // legacy spelling: top-level rope_theta, rope_scaling with "type"
        let legacy = minimal.setting("rope_theta", to: .double(500000.0)).setting("torch_dtype", to: .string("bfloat16"))
            .setting("rope_scaling", to: .object([("type", .string("linear")), ("factor", .double(2.0))]))
        let l = try parse(legacy)
        XCTAssertEqual(l.ropeTheta, 500000)
        XCTAssertEqual(l.ropeScaling, .linear(factor: 2))
        XCTAssertEqual(l.torchDType, "bfloat16")
        // rope_parameters' own rope_theta wins over the top-level one (standardize_rope_params)
        let both = legacy.setting("rope_parameters", to: .object([("rope_type", .string("default")), ("rope_theta", .double(1000.0))]))
        XCTAssertEqual(try parse(both).ropeTheta, 1000)
        XCTAssertEqual(try parse(both).ropeScaling, RopeScaling.none)
        // llama3 without original_max_position_embeddings falls back to max_position_embeddings
        let l3 = minimal.setting("max_position_embeddings", to: .int(4096)).setting("rope_scaling", to: .object([
            ("rope_type", .string("llama3")), ("factor", .double(8.0)), ("low_freq_factor", .double(1.0)), ("high_freq_factor", .double(4.0)),
        ]))
        XCTAssertEqual(try parse(l3).ropeScaling, .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 4096))
        // attention_bias on LLaMA covers o_proj too; Mistral ignores it as transformers does
        let biased = try parse(minimal.setting("attention_bias", to: .bool(true)).setting("mlp_bias", to: .bool(true)))
        XCTAssertTrue(biased.qkvBias && biased.outputBias && biased.mlpBias)
        let mistral = try parse(minimal.setting("model_type", to: .string("mistral")).setting("attention_bias", to: .bool(true)))
        XCTAssertFalse(mistral.qkvBias || mistral.outputBias)
    }

    func testRefusalsNameTheField() throws {
        let llama = try Self.fixtureJSON("models/llama/config.json")
        let rope = llama["rope_parameters"]!
        let cases: [(JSONValue, ExitStatus, String)] = [
            (llama.setting("architectures", to: .array([.string("GPT2LMHeadModel")])), .unsupported, "architectures"),
            (llama.setting("architectures", to: .string("LlamaForCausalLM")), .dataError, "architectures"),
            (llama.setting("model_type", to: .string("gemma")), .unsupported, "model_type"),
            (llama.setting("model_type", to: .string("qwen2")), .dataError, "model_type"),
            (llama.setting("hidden_act", to: .string("gelu")), .unsupported, "hidden_act"),
            (llama.setting("attention_dropout", to: .double(0.1)), .unsupported, "attention_dropout"),
            (llama.setting("rope_parameters", to: rope.setting("rope_type", to: .string("yarn"))), .unsupported, "rope_parameters.rope_type"),
            (llama.setting("rope_parameters", to: rope.setting("rope_type", to: .string("dynamic"))), .unsupported, "rope_parameters.rope_type"),
            (llama.setting("rope_parameters", to: rope.setting("partial_rotary_factor", to: .double(0.5))), .unsupported, "partial_rotary_factor"),
            (llama.setting("partial_rotary_factor", to: .double(0.5)), .unsupported, "partial_rotary_factor"),
            (llama.setting("rope_parameters", to: .object([("full_attention", rope)])), .unsupported, "rope_parameters"),
            (llama.setting("rope_parameters", to: rope.setting("factor", to: .null)), .dataError, "rope_parameters.factor"),
            (llama.setting("rope_parameters", to: rope.setting("high_freq_factor", to: .double(1.0))), .dataError, "high_freq_factor"),
            (llama.setting("rope_parameters", to: rope.setting("rope_theta", to: .double(-1.0))), .dataError, "rope_parameters.rope_theta"),
            (llama.setting("rope_parameters", to: .string("llama3")), .dataError, "rope_parameters"),
            (llama.setting("quantization_config", to: .object([("quant_method", .string("gptq"))])), .unsupported, "quantization_config"),
            (llama.setting("num_key_value_heads", to: .int(3)), .dataError, "num_key_value_heads"),
            (llama.setting("hidden_size", to: .double(32.5)), .dataError, "hidden_size"),
            (llama.setting("vocab_size", to: .int(0)), .dataError, "vocab_size"),
            (llama.setting("num_hidden_layers", to: .null), .dataError, "num_hidden_layers"),
            (llama.setting("head_dim", to: .int(7)), .unsupported, "head_dim"),
            (llama.setting("rms_norm_eps", to: .string("1e-5")), .dataError, "rms_norm_eps"),
            (llama.setting("tie_word_embeddings", to: .int(1)), .dataError, "tie_word_embeddings"),
            (.array([]), .dataError, "top level"),
        ]
        for (value, status, field) in cases { assertRefused(value, status: status, field: field) }
        var noArch = llama
        if case var .object(m) = noArch { m.removeAll { $0.0 == "architectures" || $0.0 == "model_type" }; noArch = .object(m) }
        assertRefused(noArch, status: .dataError, field: "architectures")
    }

    func testMissingConfigIsNoInput() {
        let dir = TestPaths.scratch(self)
        XCTAssertThrowsError(try TransformerConfig.read(dir)) { error in
            XCTAssertEqual(ExitStatus.of(error), .noInput)
            XCTAssertTrue("\(error)".contains("config.json"), "\(error)")
        }
        writeFile(dir + "/config.json", Array("{\"model_type\": ".utf8))
        XCTAssertThrowsError(try TransformerConfig.read(dir)) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertTrue("\(error)".contains("config.json"), "\(error)")
        }
    }

    /// inv_freq equals, bit for bit, what transformers computed (stored by the fixture script).
    func testRopeInverseFrequenciesMatchTransformers() throws {
        let rope = try SafetensorsFile(path: TestPaths.fixture("llama/rope/inv_freq.safetensors"))
        XCTAssertEqual(rope.tensors.count, 4)
        var sawMediumBand = false
        for t in rope.tensors {
            let c = try TransformerConfig.read(TestPaths.fixture("llama/rope/\(t.name).json"))
            let expected = floats(rope, t)
            let got = c.ropeInverseFrequencies()
            XCTAssertEqual(got.count, c.headDim / 2, t.name)
            XCTAssertEqual(got.map(\.bitPattern), expected.map(\.bitPattern), t.name)
            if case .llama3 = c.ropeScaling { sawMediumBand = true }
        }
        XCTAssertTrue(sawMediumBand)
        for model in ["llama", "mistral", "qwen2"] {
            let c = try TransformerConfig.read(TestPaths.fixture("llama/models/\(model)"))
            let base = try SafetensorsFile(path: TestPaths.fixture("llama/expected/\(model)/base.safetensors"))
            let expected = floats(base, try base.tensor(named: "inv_freq"))
            XCTAssertEqual(c.ropeInverseFrequencies().map(\.bitPattern), expected.map(\.bitPattern), model)
        }
    }

    func floats(_ file: SafetensorsFile, _ t: TensorInfo) -> [Float] {
        let raw = file.data(t)
        return (0..<t.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
    }
}
