import XCTest
@testable import OpConvertKit

/// `train --model` against the fixtures made with transformers + PEFT (fixtures/llama):
/// per-step losses and final adapters, base logits, finite-difference gradients, merge.
final class TransformerTrainingTests: XCTestCase {
    func fixture(_ relative: String) -> String { TestPaths.fixture("llama/" + relative) }
    func json(_ relative: String) throws -> JSONValue { try JSONParser.parse(readBytes(fixture(relative))) }

    func tensors(_ path: String) throws -> [String: [Float]] {
        let file = try SafetensorsFile(path: path)
        var out: [String: [Float]] = [:]
        for t in file.tensors {
            let raw = file.data(t)
            out[t.name] = (0..<t.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
        }
        return out
    }

    /// The fixture's settings: AdamW lr 1e-2 constant, wd 0.01, batch 4 in file order, 24 steps.
    func options(case c: JSONValue) -> TransformerTrainOptions {
        var o = TransformerTrainOptions(model: fixture(c["model"]!.stringValue!), data: fixture("data/train.safetensors"))
        o.method = AdapterMethod(rawValue: c["method"]!.stringValue!)!
        o.targetModules = c["target_modules"]!.arrayValue!.compactMap(\.stringValue)
        o.rank = c["rank"]!.intValue!
        o.alpha = c["alpha"]!.doubleValue!
        o.mlpHidden = c["mlp_hidden"]?.intValue ?? 32
        o.zDim = c["z_dim"]?.intValue ?? 32
        o.initPath = fixture(c["init"]!.stringValue!)
        o.lr = 1e-2
        o.weightDecay = 0.01
        o.batchSize = c["batch_size"]?.intValue ?? 4
        o.gradAccum = c["grad_accum"]?.intValue ?? 1
        o.maxGradNorm = c["max_grad_norm"]?.doubleValue
        o.steps = 24
        o.shuffle = false
        o.showProgress = false
        o.device = .cpu
        return o
    }

    /// fixtures/llama's cases, and the DoRA / OP-DoRA ones of fixtures/llama-extra (paths
    /// relative to fixtures/llama).
    func cases() throws -> [JSONValue] {
        let dora: [JSONValue] = [("dora", "dora_llama_qv", "adapter_model"), ("op-dora", "op_dora_llama_qv", "op_model")].map { method, name, _ in
            .object([("name", .string(name)), ("method", .string(method)), ("model", .string("models/llama")),
                     ("target_modules", .array([.string("q_proj"), .string("v_proj")])), ("rank", .int(4)), ("alpha", .int(8)),
                     ("mlp_hidden", .int(16)), ("z_dim", .int(8)), ("init", .string("../llama-extra/\(name)/init")),
                     ("final", .string("../llama-extra/\(name)/final")), ("losses", .string("../llama-extra/\(name)/losses.json"))])
        }
        let clipped: JSONValue = .object([
            ("name", .string("lora_llama_qv_clip_accum")), ("method", .string("lora")), ("model", .string("models/llama")),
            ("target_modules", .array([.string("q_proj"), .string("v_proj")])), ("rank", .int(4)), ("alpha", .int(8)),
            ("init", .string("expected/lora_llama_qv/init")), ("final", .string("../llama-extra/lora_llama_qv_clip_accum/final")),
            ("losses", .string("../llama-extra/lora_llama_qv_clip_accum/losses.json")),
            ("batch_size", .int(2)), ("grad_accum", .int(2)), ("max_grad_norm", .double(0.05)),
        ])
        return try json("cases.json")["cases"]!.arrayValue! + dora + [clipped]
    }

    func relative(_ got: [Float], _ want: [Float]) -> Double {
        let scale = want.map { abs(Double($0)) }.max()!
        return zip(got, want).map { abs(Double($0) - Double($1)) }.max()! / scale
    }

    /// The issue's proof: per-step losses within 1e-4 relative of PEFT's (and of the plain
    /// PyTorch OP-LoRA), and the final adapter within 1e-4 relative.
    func testTrainingFromTheStoredInitReproducesTheFixtures() throws {
        for c in try cases() {
            let name = c["name"]!.stringValue!
            let out = TestPaths.scratch(self) + "/out"
            var o = options(case: c)
            o.output = out
            let trainer = try TransformerTrainer(options: o)
            let summary = try trainer.run()
            let expected = try json(c["losses"]!.stringValue!)["losses"]!.arrayValue!.compactMap(\.doubleValue)
            XCTAssertEqual(summary.losses.count, expected.count, name)
            let worst = zip(summary.losses, expected).map { abs($0 - $1) / $1 }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-4, "\(name): per-step loss")
            let isOP = o.method.usesHypernetwork
            let file = isOP ? "op_model.safetensors" : "adapter_model.safetensors"
            let want = try tensors(fixture(c["final"]!.stringValue!) + "/" + file)
            let got = try tensors(out + "/" + file)
            XCTAssertEqual(Set(got.keys), Set(want.keys), name)
            var worstTensor = 0.0
            for (k, w) in want { worstTensor = max(worstTensor, relative(got[k]!, w)) }
            // The OP case is chaotic at the noise level: PyTorch's own float64 rerun of it ends
            // 9.8e-5 (largest element, relative) from its float32 checkpoint. Its (A, B) are not.
            XCTAssertLessThanOrEqual(worstTensor, isOP ? 2e-4 : 1e-4, "\(name): final adapter")
            var worstFactor = worstTensor
            if let materialized = c["final_materialized"]?.stringValue {
                let want = try tensors(fixture(materialized) + "/adapter_model.safetensors")
                worstFactor = 0
                for m in try trainer.materialize() where o.method == .opLora {
                    for (suffix, values) in [("lora_A.weight", m.a), ("lora_B.weight", m.b)] {
                        worstFactor = max(worstFactor, relative(values, want["base_model.model.\(m.path).\(suffix)"]!))
                    }
                }
                XCTAssertLessThanOrEqual(worstFactor, 1e-4, "\(name): final (A, B)")
            }
            print("\(name): per-step loss max rel diff \(worst), final adapter max rel diff \(worstTensor), (A, B) \(worstFactor), \(Int(summary.tokensPerSecond)) tokens/s")
        }
    }

    /// Fresh LoRA (B = 0) leaves the base: its logits are transformers' at every unpadded position.
    func testBaseLogitsMatchTransformers() throws {
        for model in ["llama", "mistral", "qwen2"] {
            var o = TransformerTrainOptions(model: fixture("models/" + model), data: fixture("data/train.safetensors"))
            o.device = .cpu
            o.targetModules = ["q_proj"]
            let trainer = try TransformerTrainer(options: o)
            let got = try trainer.logits(trainer.data)
            let want = try tensors(fixture("expected/\(model)/base.safetensors"))["logits"]!
            let v = 96
            let scale = want.map { abs(Double($0)) }.max()!
            var worst = 0.0
            for (t, m) in trainer.data.attentionMask.enumerated() where m == 1 {
                for j in 0..<v { worst = max(worst, abs(Double(got[t * v + j]) - Double(want[t * v + j]))) }
            }
            XCTAssertLessThanOrEqual(worst / scale, 1e-5, model)
        }
    }

    /// Adapter gradients of the whole tiny Qwen2 model (biases, every projection adapted)
    /// against central differences of the float64 reference forward.
    func testGradientsMatchFiniteDifferencesOfTheReference() throws {
        let c = try cases().first { $0["name"]!.stringValue! == "lora_qwen2_all" }!
        let o = options(case: c)
        let trainer = try TransformerTrainer(options: o)
        var data = trainer.data  // the first micro-batch: rows 0..<4
        let n = 4 * data.sequenceLength
        data.rows = 4
        data.inputIDs = Array(data.inputIDs.prefix(n))
        data.labels = Array(data.labels.prefix(n))
        data.attentionMask = Array(data.attentionMask.prefix(n))
        let batch = TransformerTrainer.batch(data, rows: Array(0..<4)[...])
        for a in trainer.adapters { try a.beginStep(trainer.ctx) }
        try trainer.model.setBatch(inputIDs: batch.ids, rows: batch.rows, seq: data.sequenceLength)
        try trainer.model.forward()
        let labels = try trainer.ctx.uploadLabels(batch.labels)
        _ = try trainer.ctx.tokenCrossEntropy(rows: batch.ids.count, classes: 96, logits: trainer.model.logits, labels: labels,
                                              gradScale: 1 / Float(batch.targets), dlogits: trainer.model.logits)
        try trainer.model.backward()
        var factors: [String: ReferenceForward.LoRA] = [:]
        for a in trainer.adapters {
            factors[a.path] = .init(a: try trainer.ctx.download(a.aBuf).map(Double.init), b: try trainer.ctx.download(a.bBuf).map(Double.init),
                                    rank: a.rank, scale: Double(a.scale))
        }
        func loss(_ f: [String: ReferenceForward.LoRA]) throws -> Double {
            var r = ReferenceForward(weights: trainer.weights, adapters: f)
            return TokenCrossEntropy.reference(logits: try r.logits(data), data: data, vocabSize: 96)
        }
        var rng = SeededRandom(seed: 7)
        var checked = 0
        for a in trainer.adapters where a.layer == 0 || a.module == "down_proj" || a.module == "q_proj" {
            let dA = try trainer.ctx.download(a.daBuf), dB = try trainer.ctx.download(a.dbBuf)
            for useB in [false, true] {
                let i = Int(rng.next() % UInt64(useB ? dB.count : dA.count))
                let h = 1e-4
                var plus = factors, minus = factors
                if useB { plus[a.path]!.b[i] += h; minus[a.path]!.b[i] -= h } else { plus[a.path]!.a[i] += h; minus[a.path]!.a[i] -= h }
                let numeric = (try loss(plus) - loss(minus)) / (2 * h)
                let analytic = Double(useB ? dB[i] : dA[i])
                XCTAssertEqual(analytic, numeric, accuracy: 2e-3 * abs(numeric) + 1e-6, "\(a.path) \(useB ? "B" : "A")[\(i)]")
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 16)
    }

    /// Gradient accumulation over 2 micro-batches of 2 rows is one step of 4 rows, and
    /// --checkpoint-activations recomputes the same activations.
    func testGradAccumAndActivationCheckpointingGiveTheSameRun() throws {
        let c = try cases().first { $0["name"]!.stringValue! == "lora_llama_qv" }!
        var o = options(case: c)
        o.steps = 4
        let plain = try TransformerTrainer(options: o).run().losses
        var accum = o
        accum.batchSize = 2
        accum.gradAccum = 2
        let accumulated = try TransformerTrainer(options: accum).run().losses
        for (x, y) in zip(plain, accumulated) { XCTAssertEqual(x, y, accuracy: 1e-5 * x) }
        var ckpt = o
        ckpt.checkpointActivations = true
        XCTAssertEqual(try TransformerTrainer(options: ckpt).run().losses, plain)
    }

    /// `opconvert merge MODEL ADAPTER` of the trained adapter (every method, from a fresh
    /// init, all seven projections with Qwen2's biases) gives the logits the trained model had.
    func testMergedAdapterGivesTheTrainedModelsLogits() throws {
        for method in AdapterMethod.allCases {
            let dir = TestPaths.scratch(self)
            var o = TransformerTrainOptions(model: fixture("models/qwen2"), data: fixture("data/train.safetensors"))
            o.method = method
            o.targetModules = TransformerTrainOptions.moduleNames
            o.rank = 4
            o.mlpHidden = 8
            o.zDim = 4
            o.lr = 1e-2
            o.batchSize = 4
            o.steps = 4
            o.device = .cpu
            o.showProgress = false
            o.output = dir + "/adapter"
            let trainer = try TransformerTrainer(options: o)
            _ = try trainer.run()
            let trained = try trainer.logits(trainer.data)
            _ = try Merger.run(MergeOptions(base: o.model, adapters: [(dir + "/adapter", 1)], output: dir + "/merged", showProgress: false))
            var reference = ReferenceForward(weights: try TransformerWeights.open(dir + "/merged"))
            let merged = try reference.logits(trainer.data)
            var base = ReferenceForward(weights: trainer.weights)
            let before = try base.logits(trainer.data)
            let scale = merged.map(abs).max()!
            var worst = 0.0, moved = 0.0
            for (t, m) in trainer.data.attentionMask.enumerated() where m == 1 {
                for j in 0..<96 {
                    worst = max(worst, abs(Double(trained[t * 96 + j]) - merged[t * 96 + j]))
                    moved = max(moved, abs(before[t * 96 + j] - merged[t * 96 + j]))
                }
            }
            XCTAssertLessThanOrEqual(worst / scale, 1e-5, method.rawValue)
            XCTAssertGreaterThan(moved / scale, 1e-3, "\(method.rawValue): training changed the logits")
        }
    }

    func testRefusals() throws {
        let c = try cases().first { $0["name"]!.stringValue! == "lora_llama_qv" }!
        var o = options(case: c)
        o.targetModules = ["q_proj", "qkv_proj"]
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("qkv_proj"), "\($0)") }
        o = options(case: c)
        o.rank = 2
        XCTAssertThrowsError(try TransformerTrainer(options: o)) { e in
            XCTAssertEqual((e as? ClassifiedError)?.exitStatus, .dataError)
            XCTAssertTrue("\(e)".contains("rank"), "\(e)")
        }
        o = options(case: c)
        o.method = .opLora
        XCTAssertThrowsError(try TransformerTrainer(options: o)) { XCTAssertTrue("\($0)".contains("not an OP checkpoint"), "\($0)") }
        o = options(case: c)
        o.targetModules = ["q_proj"]
        XCTAssertThrowsError(try TransformerTrainer(options: o)) { XCTAssertTrue("\($0)".contains("v_proj"), "\($0)") }
        // A sliding window shorter than the 16-token rows.
        let model = TestPaths.scratch(self) + "/mistral"
        try FileManager.default.copyItem(atPath: fixture("models/mistral"), toPath: model)
        var config = String(decoding: readBytes(model + "/config.json"), as: UTF8.self)
        config = config.replacingOccurrences(of: "\"sliding_window\": 32", with: "\"sliding_window\": 8")
        XCTAssertTrue(config.contains("\"sliding_window\": 8"))
        writeFile(model + "/config.json", Array(config.utf8))
        var m = TransformerTrainOptions(model: model, data: fixture("data/train.safetensors"))
        m.device = .cpu
        XCTAssertThrowsError(try TransformerTrainer(options: m)) { e in
            XCTAssertEqual((e as? ClassifiedError)?.exitStatus, .unsupported)
            XCTAssertTrue("\(e)".contains("sliding_window"), "\(e)")
        }
    }
}
