import Foundation
import XCTest
@testable import OpConvertKit

/// merge into a base with tied embeddings, and resized vocabularies (fixtures/tied, made by
/// fixtures/scripts/make_tied_fixtures.py: expected tensors are what the adapted PEFT model,
/// not merged, computes with).
final class TiedEmbeddingsTests: XCTestCase {
    struct Case {
        var name: String
        var changed: Set<String>
        var tiedAfterUntie: Bool
        var vocabSize: Int
    }

    static let base = TestPaths.fixture("tied/models/llama_tied")
    static let embed = "model.embed_tokens.weight", head = "lm_head.weight"

    private func cases() throws -> [Case] {
        let url = URL(fileURLWithPath: TestPaths.fixture("tied/cases.json"))
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let list = try XCTUnwrap(root["cases"] as? [[String: Any]])
        return try list.map { c in
            let untie = try XCTUnwrap(c["untie"] as? [String: Any])
            return Case(name: try XCTUnwrap(c["name"] as? String), changed: Set(c["changed"] as? [String] ?? []),
                        tiedAfterUntie: try XCTUnwrap(untie["tie_word_embeddings"] as? Bool),
                        vocabSize: try XCTUnwrap(untie["vocab_size"] as? Int))
        }
    }

    private func merge(_ name: String, mode: TieMode, adapter: String? = nil) throws -> (MergeSummary, String) {
        let out = TestPaths.scratch(self) + "/merged"
        var options = MergeOptions(base: Self.base, adapters: [(adapter ?? TestPaths.fixture("tied/adapters/" + name), 1)],
                                   output: out, showProgress: false)
        options.tieMode = mode
        return (try Merger.run(options), out)
    }

    private func floats(_ store: TensorStore, _ name: String) throws -> [Float] {
        let e = try XCTUnwrap(store.entry(named: name), "\(name) missing")
        XCTAssertEqual(e.info.dtype, .f32)
        return Array(store.data(e)).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    private func config(_ dir: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any])
    }

    /// f32 merge results against the adapted model's tensors: a few f32 roundings apart.
    private func assertClose(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(what): element count", file: file, line: line)
        let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(worst, 1e-6, "\(what): max |difference| \(worst)", file: file, line: line)
    }

    /// untie (the default): every tensor the adapted model uses, config.json saying so.
    func testUntieGivesTheAdaptedModelsTensors() throws {
        let all = try cases()
        XCTAssertEqual(Set(all.map(\.name)), ["embed_lora", "head_lora", "embed_modules_to_save", "resized_vocab", "tied_lora"])
        let base = try TensorStore.open(Self.base)
        XCTAssertFalse(base.contains(Self.head), "the fixture base stores only the embedding")
        for c in all {
            let (summary, out) = try merge(c.name, mode: .untie)
            let got = try TensorStore.open(out)
            let want = try TensorStore.open(TestPaths.fixture("tied/expected/\(c.name).safetensors"))
            var names = Set(base.entries.map(\.info.name))
            if !c.tiedAfterUntie { names.insert(Self.head) }
            XCTAssertEqual(Set(got.entries.map(\.info.name)), names, c.name)
            for w in want.entries where got.contains(w.info.name) || w.info.name != Self.head {
                XCTAssertEqual(got.entry(named: w.info.name)?.info.shape, w.info.shape, "\(c.name): \(w.info.name) shape")
                assertClose(try floats(got, w.info.name), try floats(want, w.info.name), "\(c.name): \(w.info.name)")
            }
            for e in base.entries where !c.changed.contains(e.info.name) {
                XCTAssertEqual(Array(got.data(got.entry(named: e.info.name)!)), Array(base.data(e)), "\(c.name): \(e.info.name) is copied")
            }
            if !c.tiedAfterUntie && !c.changed.contains(Self.head) {
                // The output projection the adapted model uses is the base embedding, byte for byte.
                XCTAssertEqual(try floats(got, Self.head), try floats(base, Self.embed), "\(c.name): lm_head.weight is the base embedding")
            }
            let cfg = try config(out)
            XCTAssertEqual(cfg["tie_word_embeddings"] as? Bool, c.tiedAfterUntie, c.name)
            XCTAssertEqual(cfg["vocab_size"] as? Int, c.vocabSize, c.name)
            XCTAssertEqual(summary.tiedEmbeddings, c.tiedAfterUntie ? nil : "untied", c.name)
            XCTAssertEqual(summary.vocabSize, c.vocabSize == 96 ? nil : c.vocabSize, c.name)
            let untieWarnings = summary.warnings.filter { $0.contains("tie_word_embeddings: false") }
            XCTAssertEqual(untieWarnings.count, c.tiedAfterUntie ? 0 : 1, "\(c.name): \(summary.warnings)")
        }
    }

    /// The rest of config.json is kept byte for byte: only the edited values change.
    func testUntieEditsOnlyTheTieAndVocabularyFields() throws {
        let (_, out) = try merge("resized_vocab", mode: .untie)
        let before = String(decoding: readBytes(Self.base + "/config.json"), as: UTF8.self)
        let after = String(decoding: readBytes(out + "/config.json"), as: UTF8.self)
        let expected = before.replacingOccurrences(of: "\"tie_word_embeddings\": true", with: "\"tie_word_embeddings\": false")
            .replacingOccurrences(of: "\"vocab_size\": 96", with: "\"vocab_size\": 104")
        XCTAssertNotEqual(before, expected)
        XCTAssertEqual(after, expected)
    }

    /// keep: PEFT's merge. The delta lands in the shared tensor, no lm_head is written and
    /// config.json is untouched; a warning says the result is not the adapted model.
    func testKeepMergesIntoTheSharedTensor() throws {
        for name in ["embed_lora", "head_lora"] {
            let (summary, out) = try merge(name, mode: .keep)
            let got = try TensorStore.open(out)
            XCTAssertFalse(got.contains(Self.head), name)
            XCTAssertEqual(readBytes(out + "/config.json"), readBytes(Self.base + "/config.json"), name)
            // The changed side, as the adapted model has it, is now the shared tensor.
            let want = try TensorStore.open(TestPaths.fixture("tied/expected/\(name).safetensors"))
            let changedSide = name == "embed_lora" ? Self.embed : Self.head
            assertClose(try floats(got, Self.embed), try floats(want, changedSide), "\(name): shared tensor")
            XCTAssertEqual(summary.tiedEmbeddings, "kept")
            XCTAssertTrue(summary.warnings.contains { $0.contains("differs from the adapted model") && $0.contains("--tie-mode keep") }, "\(summary.warnings)")
        }
    }

    /// refuse: exit 69 naming the module, nothing written.
    func testRefuseNamesTheModule() throws {
        for (name, module) in [("embed_lora", "model.embed_tokens"), ("head_lora", "lm_head"), ("embed_modules_to_save", "model.embed_tokens")] {
            let out = TestPaths.scratch(self) + "/merged"
            var options = MergeOptions(base: Self.base, adapters: [(TestPaths.fixture("tied/adapters/" + name), 1)], output: out, showProgress: false)
            options.tieMode = .refuse
            XCTAssertThrowsError(try Merger.run(options), name) { error in
                XCTAssertEqual(ExitStatus.of(error), .unsupported, name)
                XCTAssertTrue("\(error)".contains(module) && "\(error)".contains("--tie-mode refuse"), "\(error)")
            }
            XCTAssertFalse(FileSystem.exists(out), name)
        }
        // The same change on both sides needs no untying, so refuse merges it.
        let (summary, _) = try merge("tied_lora", mode: .refuse)
        XCTAssertNil(summary.tiedEmbeddings)
    }

    /// A LoRA on lm_head of a tied base resolves to the embedding's rows (it used to be
    /// refused as matching no base tensor).
    func testHeadLoraOfATiedBaseIsNotUnmatched() throws {
        let (summary, out) = try merge("head_lora", mode: .untie)
        XCTAssertEqual(summary.adapters.first?.modules, 2)
        let got = try TensorStore.open(out)
        XCTAssertEqual(got.entry(named: Self.head)?.info.shape, [96, 32])
    }

    /// A tied base that stores lm_head.weight too: untie merges each side from its own
    /// tensor; keep gives both the change (transformers ties them again on load).
    func testBothStoredAndTiedByConfig() throws {
        let both = TestPaths.fixture("tied/models/llama_tied_both")
        let base = try TensorStore.open(both)
        let want = try TensorStore.open(TestPaths.fixture("tied/expected/head_lora.safetensors"))
        for mode in [TieMode.untie, .keep] {
            let out = TestPaths.scratch(self) + "/merged"
            var options = MergeOptions(base: both, adapters: [(TestPaths.fixture("tied/adapters/head_lora"), 1)], output: out, showProgress: false)
            options.tieMode = mode
            let summary = try Merger.run(options)
            let got = try TensorStore.open(out)
            XCTAssertEqual(got.tensorCount, base.tensorCount, "\(mode)")
            assertClose(try floats(got, Self.head), try floats(want, Self.head), "\(mode): lm_head")
            if mode == .untie {
                XCTAssertEqual(try floats(got, Self.embed), try floats(base, Self.embed), "untie: embedding unchanged")
                XCTAssertEqual(try config(out)["tie_word_embeddings"] as? Bool, false)
            } else {
                assertClose(try floats(got, Self.embed), try floats(want, Self.head), "keep: the shared change")
                XCTAssertEqual(readBytes(out + "/config.json"), readBytes(both + "/config.json"))
            }
            XCTAssertEqual(summary.tiedEmbeddings, mode == .untie ? "untied" : "kept")
        }
    }

    /// An embedding LoRA and an lm_head LoRA in one merge: untie gives each side its own
    /// change; keep adds both deltas to the shared tensor (the head's saved base copy must
    /// not wipe the embedding's delta).
    func testEmbeddingAndHeadAdaptersTogether() throws {
        let base = try TensorStore.open(Self.base)
        let embedWant = try floats(try TensorStore.open(TestPaths.fixture("tied/expected/embed_lora.safetensors")), Self.embed)
        let headWant = try floats(try TensorStore.open(TestPaths.fixture("tied/expected/head_lora.safetensors")), Self.head)
        let baseEmbed = try floats(base, Self.embed)
        for mode in [TieMode.untie, .keep] {
            let out = TestPaths.scratch(self) + "/merged"
            var options = MergeOptions(base: Self.base, adapters: [(TestPaths.fixture("tied/adapters/embed_lora"), 1), (TestPaths.fixture("tied/adapters/head_lora"), 1)],
                                       output: out, showProgress: false)
            options.tieMode = mode
            _ = try Merger.run(options)
            let got = try TensorStore.open(out)
            if mode == .untie {
                assertClose(try floats(got, Self.embed), embedWant, "untie: embedding")
                assertClose(try floats(got, Self.head), headWant, "untie: lm_head")
            } else {
                XCTAssertFalse(got.contains(Self.head))
                let both = zip(zip(embedWant, headWant), baseEmbed).map { $0.0 + $0.1 - $1 }
                assertClose(try floats(got, Self.embed), both, "keep: both deltas in the shared tensor")
            }
        }
    }

    /// ensure_weight_tying: both sides get the same LoRA, so the merge stays tied (and,
    /// unlike PEFT's merge, applies the delta once).
    func testSameChangeOnBothSidesStaysTied() throws {
        let (summary, out) = try merge("tied_lora", mode: .untie)
        let got = try TensorStore.open(out)
        XCTAssertFalse(got.contains(Self.head))
        XCTAssertEqual(readBytes(out + "/config.json"), readBytes(Self.base + "/config.json"))
        XCTAssertFalse(summary.warnings.contains { $0.contains("tie") }, "\(summary.warnings)")
        let want = try TensorStore.open(TestPaths.fixture("tied/expected/tied_lora.safetensors"))
        assertClose(try floats(got, Self.embed), try floats(want, Self.embed), "tied_lora embedding")
        assertClose(try floats(got, Self.embed), try floats(want, Self.head), "tied_lora output projection")
    }

    /// A LoRA trained on a resized vocabulary does not fit the original base: exit 65 saying
    /// which base it needs.
    func testLoraOnAResizedVocabularyNeedsTheResizedBase() throws {
        for name in ["resized_embed_lora", "resized_embed_lora_with_copy"] {
            let out = TestPaths.scratch(self) + "/merged"
            let options = MergeOptions(base: Self.base, adapters: [(TestPaths.fixture("tied/bad/" + name), 1)], output: out, showProgress: false)
            XCTAssertThrowsError(try Merger.run(options), name) { error in
                XCTAssertEqual(ExitStatus.of(error), .dataError, name)
                let text = "\(error)"
                XCTAssertTrue(text.contains("model.embed_tokens") && text.contains("104") && text.contains("96") && text.contains("resized"), text)
            }
            XCTAssertFalse(FileSystem.exists(out), name)
        }
    }

    /// Tie detection: config.json's field, else transformers' default for the model type.
    func testTieDetectionFollowsConfigAndModelTypeDefaults() throws {
        func store(config: String) throws -> TensorStore {
            let dir = TestPaths.scratch(self)
            try FileManager.default.copyItem(atPath: Self.base + "/model.safetensors", toPath: dir + "/model.safetensors")
            writeFile(dir + "/config.json", Array(config.utf8))
            return try TensorStore.open(dir)
        }
        XCTAssertTrue(try VocabularyTensors.detect(in: store(config: #"{"model_type": "gemma"}"#)).headIsVirtual)
        XCTAssertFalse(try VocabularyTensors.detect(in: store(config: #"{"model_type": "llama"}"#)).tied)
        XCTAssertFalse(try VocabularyTensors.detect(in: store(config: #"{"model_type": "gemma", "tie_word_embeddings": false}"#)).tied)
        let v = try VocabularyTensors.detect(in: store(config: #"{"model_type": "llama", "tie_word_embeddings": true}"#))
        XCTAssertEqual(v.embedding, Self.embed)
        XCTAssertEqual(v.head, Self.head)
        XCTAssertFalse(v.headStored)
        XCTAssertThrowsError(try VocabularyTensors.detect(in: store(config: #"{"tie_word_embeddings": "yes"}"#))) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertTrue("\(error)".contains("config.json") && "\(error)".contains("tie_word_embeddings"), "\(error)")
        }
        // A llama without the field is not tied: a LoRA on lm_head then matches nothing.
        let dir = TestPaths.scratch(self)
        try FileManager.default.copyItem(atPath: Self.base + "/model.safetensors", toPath: dir + "/model.safetensors")
        writeFile(dir + "/config.json", Array(#"{"model_type": "llama"}"#.utf8))
        let options = MergeOptions(base: dir, adapters: [(TestPaths.fixture("tied/adapters/head_lora"), 1)], output: TestPaths.scratch(self) + "/out", showProgress: false)
        XCTAssertThrowsError(try Merger.run(options)) { error in XCTAssertTrue("\(error)".contains("match no base tensor"), "\(error)") }
    }

    /// config.json edits keep every other byte; a missing field is appended.
    func testConfigFieldEditsKeepOtherBytes() throws {
        let text = "{\n  \"a\": 1e30,\n  \"tie_word_embeddings\": true\n}\n"
        let out = try ModelConfig.settingFields([("tie_word_embeddings", .bool(false)), ("vocab_size", .int(104))], in: Array(text.utf8), path: "config.json")
        XCTAssertEqual(String(decoding: out, as: UTF8.self), "{\n  \"a\": 1e30,\n  \"tie_word_embeddings\": false,\n  \"vocab_size\": 104\n}\n")
        let empty = try ModelConfig.settingFields([("vocab_size", .int(8))], in: Array("{}".utf8), path: "config.json")
        XCTAssertEqual(try JSONParser.parse(empty)["vocab_size"]?.intValue, 8)
        XCTAssertThrowsError(try ModelConfig.settingFields([("x", .null)], in: Array("[1]".utf8), path: "config.json"))
    }
}
