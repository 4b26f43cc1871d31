import Foundation
import XCTest
@testable import OpConvertKit

/// GGUF LoRA adapters against fixtures/gguf (made by fixtures/scripts/make_gguf_fixtures.py with
/// the gguf package's GGUFWriter, following llama.cpp's convert_lora_to_gguf.py).
final class GGUFFormatTests: XCTestCase {
    struct Case {
        var name: String, adapter: String, base: String, dtype: FloatDType, file: String
    }

    static let cases: [Case] = {
        let data = FileManager.default.contents(atPath: TestPaths.fixture("gguf/cases.json"))!
        let json = try! JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (json["cases"] as! [[String: Any]]).map {
            Case(name: $0["case"] as! String, adapter: TestPaths.repoRoot + "/" + ($0["adapter"] as! String),
                 base: TestPaths.repoRoot + "/" + ($0["base"] as! String), dtype: FloatDType(rawValue: $0["outtype"] as! String)!,
                 file: TestPaths.repoRoot + "/" + ($0["file"] as! String))
        }
    }()

    func convert(_ input: String, to format: AdapterFormatID, output: String, base: String?, dtype: FloatDType? = nil) throws {
        var o = ConvertOptions(input: input, output: output, dtype: dtype, showProgress: false)
        o.to = format
        o.base = base
        _ = try Converter.run(o)
    }

    func testEveryReferenceCaseIsWrittenIdentically() throws {
        XCTAssertEqual(Self.cases.count, 5)
        let dir = TestPaths.scratch(self)
        for c in Self.cases {
            let out = dir + "/\(c.name)_\(c.dtype.rawValue).gguf"
            try convert(c.adapter, to: .gguf, output: out, base: c.base, dtype: c.dtype)
            let mine = try GGUFFile(path: out), ref = try GGUFFile(path: c.file)
            // Metadata and tensors first, so that a difference is named; then the bytes.
            XCTAssertEqual(mine.metadata.map(\.key), ref.metadata.map(\.key), c.name)
            for (a, b) in zip(mine.metadata, ref.metadata) { XCTAssertEqual(a.value, b.value, "\(c.name) \(a.key)") }
            XCTAssertEqual(mine.tensors.map(\.name), ref.tensors.map(\.name), c.name)
            for (a, b) in zip(mine.tensors, ref.tensors) {
                XCTAssertEqual(a.dims, b.dims, "\(c.name) \(a.name)")
                XCTAssertEqual(a.type, b.type, "\(c.name) \(a.name)")
                XCTAssertEqual(Array(mine.data(a)), Array(ref.data(b)), "\(c.name) \(a.name)")
            }
            XCTAssertEqual(readBytes(out), readBytes(c.file), "\(c.name) \(c.dtype)")
        }
    }

    func testReferenceMetadataAndShapes() throws {
        let f = try GGUFFile(path: TestPaths.fixture("gguf/reference/llama_gqa_lora_f32.gguf"))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.value("general.architecture"), .string("llama"))
        XCTAssertEqual(f.value("general.type"), .string("adapter"))
        XCTAssertEqual(f.value("adapter.type"), .string("lora"))
        XCTAssertEqual(f.value("adapter.lora.alpha"), .f32(16))
        // GQA base: hidden 32, 4 heads, 2 kv heads of 8 -> k/v out 16; k at rank 4 (rank_pattern).
        XCTAssertEqual(f.tensor(named: "blk.0.attn_q.weight.lora_a")?.dims, [32, 8])
        XCTAssertEqual(f.tensor(named: "blk.0.attn_q.weight.lora_b")?.dims, [8, 32])
        XCTAssertEqual(f.tensor(named: "blk.1.attn_k.weight.lora_a")?.dims, [32, 4])
        XCTAssertEqual(f.tensor(named: "blk.1.attn_k.weight.lora_b")?.dims, [4, 16])
        XCTAssertEqual(f.tensor(named: "blk.0.ffn_down.weight.lora_a")?.dims, [64, 8])
        XCTAssertEqual(f.tensors.count, 28)
    }

    /// Opening a GGUF adapter with its base gives PEFT's factors back exactly (f32), with the
    /// rotary permutation of q and k undone (k by the 2 kv heads) and scale = alpha / rank.
    func testOpenGivesPEFTFactorsExactly() throws {
        for c in Self.cases where c.dtype == .f32 {
            let base = try TensorStore.open(c.base)
            let gguf = try GGUFFormat.open(c.file, options: AdapterOpenOptions(base: base))
            let peft = try PEFTFormat.open(c.adapter, options: AdapterOpenOptions())
            XCTAssertEqual(gguf.kind, .ggufLora)
            let byPath = Dictionary(uniqueKeysWithValues: peft.modules.map { ($0.path, $0) })
            XCTAssertEqual(gguf.modules.count, peft.modules.count, c.name)
            for m in gguf.modules {
                let p = try XCTUnwrap(byPath[m.path], "\(c.name): \(m.path)")
                XCTAssertEqual(m.a.shape, p.a.shape, m.path)
                XCTAssertEqual(m.b.shape, p.b.shape, m.path)
                XCTAssertEqual(try m.a.floats(), try p.a.floats(), "\(c.name) \(m.path) A")
                XCTAssertEqual(try m.b.floats(), try p.b.floats(), "\(c.name) \(m.path) B")
                XCTAssertEqual(m.rank, p.rank, m.path)
                XCTAssertEqual(m.scaling, p.scaling, m.path)
            }
        }
        // The k projections of the GQA adapter have rank 4: scale 16 / 4.
        let gqa = try GGUFFormat.open(TestPaths.fixture("gguf/reference/llama_gqa_lora_f32.gguf"),
                                      options: AdapterOpenOptions(base: try TensorStore.open(TestPaths.fixture("llama/models/llama"))))
        let k = try XCTUnwrap(gqa.modules.first { $0.path == "model.layers.0.self_attn.k_proj" })
        XCTAssertEqual(k.rank, 4)
        XCTAssertEqual(k.scaling, 4)
    }

    func testHalfPrecisionFilesHoldTheRoundedFactors() throws {
        let base = try TensorStore.open(TestPaths.fixture("peft/models/llama_f32"))
        let peft = try PEFTFormat.open(TestPaths.fixture("peft/adapters/llama_lora"), options: AdapterOpenOptions())
        for dtype in [DType.f16, .bf16] {
            let file = TestPaths.fixture("gguf/reference/llama_lora_\(dtype.rawValue.lowercased()).gguf")
            XCTAssertEqual(try GGUFFile(path: file).tensors.first?.type.dtype, dtype)
            let gguf = try GGUFFormat.open(file, options: AdapterOpenOptions(base: base))
            for (m, p) in zip(gguf.modules, peft.modules) {
                XCTAssertEqual(m.path, p.path)
                let rounded = roundTrip(try p.b.floats(), dtype)
                XCTAssertEqual(try m.b.floats(), rounded, "\(dtype) \(m.path)")
                XCTAssertNotEqual(rounded, try p.b.floats(), "rounding must change something (else the test proves nothing)")
            }
        }
    }

    func roundTrip(_ v: [Float], _ dtype: DType) -> [Float] {
        var bytes = [UInt8](repeating: 0, count: v.count * 2)
        v.withUnsafeBufferPointer { s in bytes.withUnsafeMutableBytes { DTypeConversion.encode(s.baseAddress!, to: $0.baseAddress!, dtype, count: v.count) } }
        var out = [Float](repeating: 0, count: v.count)
        bytes.withUnsafeBytes { s in out.withUnsafeMutableBufferPointer { DTypeConversion.decode(s.baseAddress!, dtype, to: $0.baseAddress!, count: v.count) } }
        return out
    }

    /// PEFT -> GGUF -> PEFT gives the very same f32 tensors and the same per-module scalings.
    func testPEFTToGGUFToPEFTIsBitExact() throws {
        let dir = TestPaths.scratch(self)
        for c in Self.cases where c.dtype == .f32 {
            try convert(c.adapter, to: .gguf, output: dir + "/\(c.name).gguf", base: c.base)
            try convert(dir + "/\(c.name).gguf", to: .peft, output: dir + "/\(c.name)_peft", base: c.base)
            let original = try SafetensorsFile(path: c.adapter + "/adapter_model.safetensors")
            let back = try SafetensorsFile(path: dir + "/\(c.name)_peft/adapter_model.safetensors")
            XCTAssertEqual(back.tensors.map(\.name).sorted(), original.tensors.map(\.name).sorted(), c.name)
            for t in original.tensors {
                let u = try back.tensor(named: t.name)
                XCTAssertEqual(u.dtype, .f32)
                XCTAssertEqual(u.shape, t.shape, t.name)
                XCTAssertEqual(Array(back.data(u)), Array(original.data(t)), "\(c.name) \(t.name)")
            }
            let p0 = try PEFTFormat.open(c.adapter, options: AdapterOpenOptions())
            let p1 = try PEFTFormat.open(dir + "/\(c.name)_peft", options: AdapterOpenOptions())
            let s1 = Dictionary(uniqueKeysWithValues: p1.modules.map { ($0.path, ($0.rank, $0.scaling)) })
            for m in p0.modules {
                XCTAssertEqual(s1[m.path]?.0, m.rank, m.path)
                XCTAssertEqual(s1[m.path]?.1, m.scaling, m.path)
            }
        }
    }

    /// Merging the GGUF adapter into the transformers base gives the same bytes as merging the
    /// PEFT adapter it came from.
    func testMergeOfGGUFEqualsMergeOfItsPEFTSource() throws {
        let dir = TestPaths.scratch(self)
        for c in Self.cases where c.dtype == .f32 {
            _ = try Merger.run(MergeOptions(base: c.base, adapters: [(c.file, 1)], output: dir + "/\(c.name)_gguf", showProgress: false))
            _ = try Merger.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: dir + "/\(c.name)_peft", showProgress: false))
            let a = try TensorStore.open(dir + "/\(c.name)_gguf"), b = try TensorStore.open(dir + "/\(c.name)_peft")
            let base = try TensorStore.open(c.base)
            XCTAssertEqual(a.entries.map(\.info.name), b.entries.map(\.info.name))
            var changed = 0
            for (x, y) in zip(a.entries, b.entries) {
                XCTAssertEqual(Array(a.data(x)), Array(b.data(y)), "\(c.name) \(x.info.name)")
                if let e = base.entry(named: x.info.name), Array(base.data(e)) != Array(a.data(x)) { changed += 1 }
            }
            XCTAssertEqual(changed, 14, "\(c.name): every adapted weight (7 per layer, 2 layers) changes")
        }
    }

    func testOpeningQKWithoutABaseNamesTheBaseOption() throws {
        XCTAssertThrowsError(try GGUFFormat.open(TestPaths.fixture("gguf/reference/llama_lora_f32.gguf"), options: AdapterOpenOptions())) {
            XCTAssertTrue("\($0)".contains("--base"), "\($0)")
            XCTAssertEqual(($0 as? ClassifiedError)?.exitStatus, .unsupported)
        }
        // qwen2 keeps transformers' row order: no base needed.
        let q = try GGUFFormat.open(TestPaths.fixture("gguf/reference/qwen2_lora_f32.gguf"), options: AdapterOpenOptions())
        XCTAssertEqual(q.modules.count, 14)
        XCTAssertEqual(q.modules.first?.path, "model.layers.0.mlp.down_proj")
    }

    func testRefusals() throws {
        let base = try TensorStore.open(TestPaths.fixture("llama/models/llama"))
        func refused(_ path: String, _ status: ExitStatus, _ phrase: String, line: UInt = #line) {
            XCTAssertThrowsError(try GGUFFormat.open(TestPaths.fixture(path), options: AdapterOpenOptions(base: base)), line: line) {
                XCTAssertEqual(($0 as? ClassifiedError)?.exitStatus, status, "\($0)", line: line)
                XCTAssertTrue("\($0)".contains(phrase), "\($0)", line: line)
                XCTAssertFalse("\($0)".contains("\n"), line: line)
            }
        }
        refused("gguf/bad/q8_0_lora.gguf", .unsupported, "has type Q8_0")
        refused("gguf/bad/model.gguf", .unsupported, "a GGUF model, not an adapter")
        refused("gguf/bad/all_types_unpaired.gguf", .dataError, "has no blk.0.attn_v.weight.lora_b")
    }

    func testWriterRefusesWhatGGUFCannotHold() throws {
        let dir = TestPaths.scratch(self)
        func refused(_ adapter: String, base: String?, _ phrase: String, dtype: FloatDType? = nil, line: UInt = #line) {
            XCTAssertThrowsError(try convert(TestPaths.fixture(adapter), to: .gguf, output: dir + "/out.gguf", base: base.map(TestPaths.fixture), dtype: dtype), line: line) {
                XCTAssertEqual(($0 as? ClassifiedError)?.exitStatus, .unsupported, "\($0)", line: line)
                XCTAssertTrue("\($0)".contains(phrase), "\($0)", line: line)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.gguf"), line: line)
        }
        refused("peft/adapters/llama_lora", base: nil, "--base")
        refused("peft/adapters/llama_dora", base: "peft/models/llama_f32", "DoRA")
        refused("peft/adapters/llama_rslora_patterns", base: "peft/models/llama_f32", "one alpha")
        refused("peft/adapters/llama_lora", base: "peft/models/llama_f32", "F32, F16 or BF16", dtype: .f64)
        refused("peft/adapters/gpt2_lora", base: "peft/models/gpt2", "no GGUF adapter mapping")
        // The wrong base (hidden 32, the adapter's is 64): a shape mismatch, exit 65.
        XCTAssertThrowsError(try convert(TestPaths.fixture("peft/adapters/llama_lora"), to: .gguf, output: dir + "/out.gguf",
                                         base: TestPaths.fixture("llama/models/llama"))) {
            XCTAssertEqual(($0 as? ClassifiedError)?.exitStatus, .dataError, "\($0)")
            XCTAssertTrue("\($0)".contains("does not fit the base tensor"), "\($0)")
        }
    }

    func testSummaryListsMetadataTensorsAndModules() throws {
        let s = try GGUFFormat.summarize(TestPaths.fixture("gguf/reference/llama_gqa_lora_f32.gguf"), options: AdapterOpenOptions())
        XCTAssertEqual(s.kind, "gguf-adapter")
        XCTAssertEqual(s.details["adapter.lora.alpha"], "16.0")
        XCTAssertEqual(s.details["general.architecture"], "llama")
        XCTAssertEqual(s.details["gguf.tensor_types"], "F32: 28")
        XCTAssertEqual(s.tensors?.count, 28)
        XCTAssertEqual(s.tensors?.first { $0.name == "blk.0.attn_k.weight.lora_b" }?.shape, [16, 4])
        XCTAssertEqual(s.modules.count, 14)
        XCTAssertEqual(s.modules.first { $0.name == "model.layers.0.self_attn.k_proj" }?.rank, 4)
        let model = try GGUFFormat.summarize(TestPaths.fixture("gguf/bad/model.gguf"), options: AdapterOpenOptions())
        XCTAssertEqual(model.kind, "gguf-model")
        let q = try GGUFFormat.summarize(TestPaths.fixture("gguf/bad/q8_0_lora.gguf"), options: AdapterOpenOptions())
        XCTAssertEqual(q.tensors?.first?.shape, [544])
        XCTAssertNotNil(q.details["gguf.quantized_tensors"])
    }

    func testRotaryOrderRoundTripsAndMatchesTheDefinition() throws {
        // 2 heads of 4 rows, 1 column: llama.cpp row h*4 + 2j + t holds transformers row h*4 + 2t + j.
        let hf: [Float] = [0, 1, 2, 3, 4, 5, 6, 7]
        let llama = try RotaryOrder.transformersToLlamaCpp(hf, rows: 8, columns: 1, heads: 2, what: "t")
        XCTAssertEqual(llama, [0, 2, 1, 3, 4, 6, 5, 7])
        XCTAssertEqual(try RotaryOrder.llamaCppToTransformers(llama, rows: 8, columns: 1, heads: 2, what: "t"), hf)
        XCTAssertThrowsError(try RotaryOrder.transformersToLlamaCpp(hf, rows: 8, columns: 1, heads: 3, what: "t"))
    }

    func testNameMap() {
        XCTAssertEqual(GGUFNames.ggufName(ofTensor: "model.layers.12.self_attn.o_proj.weight"), "blk.12.attn_output.weight")
        XCTAssertEqual(GGUFNames.ggufName(ofTensor: "lm_head.weight"), "output.weight")
        XCTAssertEqual(GGUFNames.ggufName(ofTensor: "model.layers.x.mlp.up_proj.weight"), nil)
        XCTAssertEqual(GGUFNames.transformersName(ofModule: "blk.3.ffn_gate"), "model.layers.3.mlp.gate_proj")
        XCTAssertEqual(GGUFNames.transformersName(ofModule: "blk.03.ffn_gate"), nil)
        XCTAssertEqual(GGUFNames.transformersName(ofModule: "token_embd"), "model.embed_tokens")
    }

    func testOneAlphaForTheFile() throws {
        func module(_ rank: Int, _ scaling: Double) -> LoraModule {
            LoraModule(path: "m\(rank)", a: .memory(values: [], shape: [rank, 0]), b: .memory(values: [], shape: [0, rank]), rank: rank, scaling: scaling)
        }
        // rank_pattern with one alpha: 16/8 and 16/4.
        XCTAssertEqual(try GGUFFormat.globalAlpha([module(8, 2), module(4, 4)], path: "o"), 16)
        // Scale 1 everywhere with mixed ranks: llama.cpp's alpha 0.
        XCTAssertEqual(try GGUFFormat.globalAlpha([module(8, 1), module(4, 1)], path: "o"), 0)
        XCTAssertEqual(try GGUFFormat.globalAlpha([module(8, 1), module(8, 1)], path: "o"), 8)
        XCTAssertThrowsError(try GGUFFormat.globalAlpha([module(8, 2), module(4, 2)], path: "o")) {
            XCTAssertTrue("\($0)".contains("one alpha"), "\($0)")
        }
        XCTAssertThrowsError(try GGUFFormat.globalAlpha([module(8, 0)], path: "o"))
    }

    /// A file with alpha 0 reads with scale 1, and a qwen2 GGUF round-trips through our writer.
    func testAlphaZeroMeansScaleOne() throws {
        let dir = TestPaths.scratch(self)
        let src = try GGUFFile(path: TestPaths.fixture("gguf/reference/qwen2_lora_f32.gguf"))
        let metadata = src.metadata.map { $0.key == "adapter.lora.alpha" ? (key: $0.key, value: GGUFValue.f32(0)) : $0 }
        let specs = src.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
        try GGUFWriter.write(to: dir + "/a0.gguf", metadata: metadata, tensors: specs, policy: OutputPolicy()) { Array(src.data(src.tensors[$0])) }
        let a0 = try GGUFFormat.open(dir + "/a0.gguf", options: AdapterOpenOptions())
        XCTAssertEqual(Set(a0.modules.map(\.scaling)), [1])
        // Everything but the alpha is the same file.
        XCTAssertEqual(readBytes(dir + "/a0.gguf").count, readBytes(TestPaths.fixture("gguf/reference/qwen2_lora_f32.gguf")).count)
    }

    /// MistralForCausalLM converts as llama (llama.cpp's LlamaModel): q rows permuted by the heads;
    /// back to PEFT and merged, nothing changes.
    func testMistralIsWrittenAsLlamaAndRoundTrips() throws {
        let dir = TestPaths.scratch(self)
        let adapter = TestPaths.fixture("llama/expected/lora_mistral_qv/final"), base = TestPaths.fixture("llama/models/mistral")
        try convert(adapter, to: .gguf, output: dir + "/m.gguf", base: base)
        let f = try GGUFFile(path: dir + "/m.gguf")
        XCTAssertEqual(f.value("general.architecture"), .string("llama"))
        let peft = try PEFTFormat.open(adapter, options: AdapterOpenOptions())
        let q = try XCTUnwrap(peft.modules.first { $0.path.hasSuffix("layers.0.self_attn.q_proj") })
        let stored = try f.floats(try XCTUnwrap(f.tensor(named: "blk.0.attn_q.weight.lora_b")))
        let expected = try RotaryOrder.transformersToLlamaCpp(try q.b.floats(), rows: q.b.shape[0], columns: q.b.shape[1], heads: 4, what: "q")
        XCTAssertEqual(stored, expected)
        XCTAssertNotEqual(stored, try q.b.floats())
        try convert(dir + "/m.gguf", to: .peft, output: dir + "/back", base: base)
        let a = try SafetensorsFile(path: adapter + "/adapter_model.safetensors"), b = try SafetensorsFile(path: dir + "/back/adapter_model.safetensors")
        for t in a.tensors { XCTAssertEqual(Array(b.data(try b.tensor(named: t.name))), Array(a.data(t)), t.name) }
        _ = try Merger.run(MergeOptions(base: base, adapters: [(dir + "/m.gguf", 1)], output: dir + "/mg", showProgress: false))
        _ = try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/mp", showProgress: false))
        XCTAssertEqual(readBytes(dir + "/mg/model.safetensors"), readBytes(dir + "/mp/model.safetensors"))
    }

    /// Version 2 files (same layout, u64 counts) read like version 3.
    func testVersion2Reads() throws {
        let dir = TestPaths.scratch(self)
        var b = readBytes(TestPaths.fixture("gguf/reference/qwen2_lora_f32.gguf"))
        b[4] = 2
        writeFile(dir + "/v2.gguf", b)
        let f = try GGUFFile(path: dir + "/v2.gguf")
        XCTAssertEqual(f.version, 2)
        XCTAssertEqual(f.tensors.count, 28)
        XCTAssertEqual(try GGUFFormat.open(dir + "/v2.gguf", options: AdapterOpenOptions()).modules.count, 14)
    }

    /// Metadata problems, each refused with its reason; GGUF -> GGUF through the neutral form
    /// gives the same file.
    func testMetadataRefusalsAndRewrite() throws {
        let dir = TestPaths.scratch(self)
        let src = try GGUFFile(path: TestPaths.fixture("gguf/reference/llama_lora_f32.gguf"))
        func variant(_ name: String, _ edit: ([(key: String, value: GGUFValue)]) -> [(key: String, value: GGUFValue)]) throws -> String {
            let specs = src.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
            try GGUFWriter.write(to: dir + "/" + name, metadata: edit(src.metadata), tensors: specs, policy: OutputPolicy()) { Array(src.data(src.tensors[$0])) }
            return dir + "/" + name
        }
        let base = try TensorStore.open(TestPaths.fixture("peft/models/llama_f32"))
        func refused(_ path: String, _ status: ExitStatus, _ phrase: String, line: UInt = #line) {
            XCTAssertThrowsError(try GGUFFormat.open(path, options: AdapterOpenOptions(base: base)), line: line) {
                XCTAssertEqual(($0 as? ClassifiedError)?.exitStatus, status, "\($0)", line: line)
                XCTAssertTrue("\($0)".contains(phrase), "\($0)", line: line)
            }
        }
        refused(try variant("notype.gguf") { $0.filter { $0.key != "adapter.type" } }, .dataError, "adapter.type is missing")
        refused(try variant("cvec.gguf") { $0.map { $0.key == "adapter.type" ? (key: $0.key, value: .string("alora")) : $0 } }, .unsupported, "adapter.type is alora")
        refused(try variant("gpt2.gguf") { $0.map { $0.key == "general.architecture" ? (key: $0.key, value: .string("gpt2")) : $0 } }, .unsupported, "general.architecture gpt2")
        refused(try variant("qwen.gguf") { $0.map { $0.key == "general.architecture" ? (key: $0.key, value: .string("qwen2")) : $0 } }, .unsupported, "the base")
        refused(try variant("alpha.gguf") { $0.map { $0.key == "adapter.lora.alpha" ? (key: $0.key, value: .string("16")) : $0 } }, .dataError, "adapter.lora.alpha")
        // Re-written from the neutral form: the same bytes.
        try convert(TestPaths.fixture("gguf/reference/llama_lora_f32.gguf"), to: .gguf, output: dir + "/again.gguf", base: TestPaths.fixture("peft/models/llama_f32"))
        XCTAssertEqual(readBytes(dir + "/again.gguf"), readBytes(TestPaths.fixture("gguf/reference/llama_lora_f32.gguf")))
    }

    /// llama.cpp's own convert_lora_to_gguf.py output (fixtures/gguf/llama_cpp): opconvert writes
    /// the same tensors (order, ggml shapes, types, bytes) and metadata, except the script's
    /// model-card name.
    func testOutputMatchesLlamaCppsOwnConverter() throws {
        let data = FileManager.default.contents(atPath: TestPaths.fixture("gguf/cases.json"))!
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let made = (json["cases"] as! [[String: Any]]).compactMap { c in (c["llama_cpp_file"] as? String).map { (c, $0) } }
        XCTAssertEqual(made.count, 3)
        let dir = TestPaths.scratch(self)
        for (c, file) in made {
            let name = c["case"] as! String
            try convert(TestPaths.repoRoot + "/" + (c["adapter"] as! String), to: .gguf, output: dir + "/\(name).gguf",
                        base: TestPaths.repoRoot + "/" + (c["base"] as! String))
            let mine = try GGUFFile(path: dir + "/\(name).gguf"), theirs = try GGUFFile(path: TestPaths.repoRoot + "/" + file)
            let theirMetadata = theirs.metadata.filter { $0.key != "general.name" }
            XCTAssertEqual(Set(mine.metadata.map(\.key)), Set(theirMetadata.map(\.key)), name)
            for (key, value) in theirMetadata { XCTAssertEqual(mine.value(key), value, "\(name) \(key)") }
            XCTAssertEqual(mine.tensors.map(\.name), theirs.tensors.map(\.name), name)
            for (a, b) in zip(mine.tensors, theirs.tensors) {
                XCTAssertEqual(a.dims, b.dims, "\(name) \(a.name)")
                XCTAssertEqual(a.type, b.type, "\(name) \(a.name)")
                XCTAssertEqual(Array(mine.data(a)), Array(theirs.data(b)), "\(name) \(a.name)")
            }
            // And llama.cpp's file opens to the PEFT factors, like ours.
            let opened = try GGUFFormat.open(TestPaths.repoRoot + "/" + file,
                                             options: AdapterOpenOptions(base: try TensorStore.open(TestPaths.repoRoot + "/" + (c["base"] as! String))))
            XCTAssertEqual(opened.modules.count, 14, name)
        }
    }
}
