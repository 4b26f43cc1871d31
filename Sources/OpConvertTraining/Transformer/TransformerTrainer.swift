import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// `opconvert train --model DIR`: fine-tunes LoRA, DoRA, OP-LoRA or OP-DoRA adapters on a frozen
/// LLaMA-family causal LM with AdamW, all compute in a kernel plugin (ABI v3). The loss is
/// transformers' causal-LM loss: logits at t scored against labels[t + 1], mean over the
/// counted targets of the whole optimizer step (all --grad-accum micro-batches).
public final class TransformerTrainer {
    public let options: TransformerTrainOptions
    public let weights: TransformerWeights
    public let data: TokenData
    public let evalData: TokenData?
    public let device: SelectedDevice
    package let ctx: KernelContext
    package let model: TransformerModel
    package let adapters: [ProjectionAdapter]
    private var shuffler: SeededRandom

    public init(options: TransformerTrainOptions, device selected: SelectedDevice? = nil) throws {
        self.options = options
        try options.validate()
        weights = try TransformerWeights.open(options.model)
        let c = weights.config
        data = try TokenData.read(options.data, vocabSize: c.vocabSize)
        evalData = try options.evalData.map { try TokenData.read($0, vocabSize: c.vocabSize) }
        for d in [data] + (evalData.map { [$0] } ?? []) {
            try c.checkSequenceLength(d.sequenceLength)
            try Self.checkPaddedLabels(d)
        }
        let (moduleOut, moduleIn) = options.targetModules.map { TransformerModel.shape(of: $0, c) }.reduce((Int.max, Int.max)) {
            (min($0.0, $1.out), min($0.1, $1.in))
        }
        guard options.rank <= min(moduleOut, moduleIn) else {
            throw TrainError.invalidOption("--rank \(options.rank) is larger than the smallest targeted projection allows (\(min(moduleOut, moduleIn)))")
        }
        if options.method.usesHypernetwork {
            for m in options.targetModules {
                let (o, i) = TransformerModel.shape(of: m, c)
                let generated = try TrainingLimits.elements([options.rank, i + o], "--rank \(options.rank) at \(m)")
                _ = try TrainingLimits.elements([generated, options.mlpHidden], "--mlp-hidden \(options.mlpHidden) at \(m)")
            }
        }
        let seq = max(data.sequenceLength, evalData?.sequenceLength ?? 0)
        let rows = min(options.batchSize, max(data.rows, evalData?.rows ?? 0))
        _ = try TrainingLimits.elements([rows, seq, c.vocabSize], "--batch-size \(options.batchSize) x sequence \(seq) x vocab")
        _ = try TrainingLimits.elements([rows, c.headCount, seq, seq], "--batch-size \(options.batchSize) attention probabilities")
        var chosen = try selected ?? DeviceSelection.select(options.device, pluginPath: options.plugin)
        var context = try chosen.makeContext(threads: options.threads, allowTF32: options.allowTF32)
        if !context.supportsTransformerKernels, selected == nil, options.device == .auto, options.plugin == nil, chosen.label != "cpu" {
            // --device auto found a GPU whose plugin predates the transformer kernels: the CPU can run it.
            chosen = SelectedDevice(plugin: try KernelPlugin.load(path: nil), device: 0, label: "cpu",
                                    announcement: "opconvert: using cpu (\(chosen.label): its plugin has no transformer kernels)")
            context = try chosen.makeContext(threads: options.threads, allowTF32: options.allowTF32)
        }
        device = chosen
        ctx = context
        guard ctx.supportsTransformerKernels else {
            throw PluginError.pluginTooOld(plugin: device.plugin.name, function: "embedding_forward (the transformer kernels of ABI v3)")
        }
        model = try TransformerModel(ctx, weights: weights, maxRows: rows, maxSeq: seq, checkpointActivations: options.checkpointActivations)
        var rng = SeededRandom(seed: options.seed)
        var list: [ProjectionAdapter] = []
        for l in 0..<c.layerCount {
            for m in TransformerTrainOptions.moduleNames where options.targetModules.contains(m) {
                let (o, i) = TransformerModel.shape(of: m, c)
                let a = try ProjectionAdapter(ctx, layer: l, module: m, baseWeight: model.projection(layer: l, module: m).weight, inF: i, outF: o,
                                              options: options, maxTokens: rows * seq, rng: &rng)
                model.setAdapter(a)
                list.append(a)
            }
        }
        adapters = list
        shuffler = SeededRandom(seed: options.seed ^ 0xD1CE_5EED)
        if let initPath = options.initPath { try loadInit(initPath) }
    }

    /// transformers scores a padded position's logits with the padded keys masked; the
    /// causal kernels do not mask them, so a target predicted from a padded position would
    /// get another loss. Such a label is refused (with right padding it is a label at a
    /// padded position after the first one).
    static func checkPaddedLabels(_ d: TokenData) throws {
        let t = d.sequenceLength
        for r in 0..<d.rows {
            for p in 1..<max(t, 1) where d.labels[r * t + p] != TokenData.ignoreIndex && d.attentionMask[r * t + p - 1] == 0 {
                throw TransformerError.invalidData(path: d.path, reason: "row \(r), column \(p): label \(d.labels[r * t + p]) follows a padded position (attention_mask 0); set labels after the padding to -100")
            }
        }
    }

    public var trainParameterCount: Int { adapters.reduce(0) { $0 + $1.trainParameterCount } }

    /// Starts from a PEFT adapter (lora) or OP checkpoint (op-lora) with the same method,
    /// rank and targets; its values are used as they are.
    func loadInit(_ path: String) throws {
        let expected = Set(adapters.map(\.path))
        func checkModules(_ found: [String]) throws {
            let got = Set(found)
            if let missing = expected.subtracting(got).sorted().first {
                throw TransformerError.invalidData(path: path, reason: "no adapter for \(missing), which --target-modules \(options.targetModules.joined(separator: ",")) adapts")
            }
            if let extra = got.subtracting(expected).sorted().first {
                throw TransformerError.invalidData(path: path, reason: "adapts \(extra), which --target-modules \(options.targetModules.joined(separator: ",")) does not")
            }
        }
        func checkLoRA(r: Int, alpha: Double, rsLoRA: Bool) throws {
            guard r == options.rank else { throw TransformerError.invalidData(path: path, reason: "has rank r = \(r), this run --rank \(options.rank)") }
            guard alpha == options.alpha else { throw TransformerError.invalidData(path: path, reason: "has lora_alpha \(alpha), this run --alpha \(options.alpha)") }
            guard rsLoRA == options.useRSLoRA else { throw TransformerError.invalidData(path: path, reason: "has use_rslora \(rsLoRA), this run \(options.useRSLoRA)") }
        }
        let isOP = OPCheckpoint.isCheckpoint(path)
        guard isOP == options.method.usesHypernetwork else {
            throw TransformerError.invalidData(path: path, reason: isOP ? "is an OP checkpoint, this run trains --method \(options.method.rawValue) (use op-lora or op-dora)"
                                                                        : "is not an OP checkpoint (no \(OPConfig.fileName)), this run trains --method \(options.method.rawValue) (use lora or dora)")
        }
        if isOP {
            let ckpt = try OPCheckpoint(path: path)
            try checkLoRA(r: ckpt.config.peft.r, alpha: ckpt.config.peft.loraAlpha, rsLoRA: ckpt.config.peft.useRSLoRA)
            guard ckpt.isDoRA == options.method.usesMagnitude else {
                throw TransformerError.invalidData(path: path, reason: "is an \(ckpt.isDoRA ? "OP-DoRA" : "OP-LoRA") checkpoint, this run trains --method \(options.method.rawValue)")
            }
            try checkModules(ckpt.modules.map(\.path))
            let byPath = Dictionary(ckpt.modules.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
            for a in adapters {
                guard case let .joint(mlp) = byPath[a.path]!.generator else {
                    throw TransformerError.invalidData(path: path, reason: "\(a.path) has separate A and B hypernetworks; this trainer uses one MLP per module")
                }
                let module = byPath[a.path]!
                var values = ["op_mlp.z": try mlp.z.floats(), "op_mlp.fc1.weight": try mlp.fc1Weight.floats(),
                              "op_mlp.fc1.bias": try mlp.fc1Bias.floats(), "op_mlp.fc2.weight": try mlp.fc2Weight.floats(),
                              "op_mlp.fc2.bias": try mlp.fc2Bias.floats()]
                if let w = module.magnitudeWeight { values["op_mlp.magnitude.weight"] = try w.floats() }
                if let b = module.magnitudeBias { values["op_mlp.magnitude.bias"] = try b.floats() }
                // Without a stored offset the head's output is the magnitude itself.
                let offset = a.method.usesMagnitude ? try module.magnitudeOffset?.floats() ?? [Float](repeating: 0, count: a.outF) : nil
                try a.load(ctx, values: values, offset: offset, source: path)
            }
        } else {
            let (peft, peftConfig) = try PEFTFormat.openWithConfig(path)
            guard peft.usesDoRA == options.method.usesMagnitude else {
                throw TransformerError.invalidData(path: path, reason: "is a \(peft.usesDoRA ? "DoRA" : "LoRA") adapter (use_dora \(peft.usesDoRA)), this run trains --method \(options.method.rawValue)")
            }
            try checkLoRA(r: peftConfig.r, alpha: peftConfig.loraAlpha, rsLoRA: peftConfig.useRSLoRA)
            try checkModules(peft.modules.map(\.path))
            let byPath = Dictionary(peft.modules.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
            for a in adapters {
                let m = byPath[a.path]!
                var values = ["lora_A.weight": try m.a.floats(), "lora_B.weight": try m.b.floats()]
                if let mag = m.magnitude { values["lora_magnitude_vector"] = try mag.floats() }
                try a.load(ctx, values: values, source: path)
            }
        }
    }

    /// A micro-batch on the host: ids, shifted labels, counted targets, real tokens.
    package struct Batch {
        package var ids: [Int32]
        package var labels: [Int64]
        package var rows: Int
        package var targets: Int
        var tokens: Int
    }

    package static func batch(_ d: TokenData, rows indices: ArraySlice<Int>) -> Batch {
        let t = d.sequenceLength
        var ids: [Int32] = [], labels: [Int64] = []
        ids.reserveCapacity(indices.count * t)
        labels.reserveCapacity(indices.count * t)
        var targets = 0, tokens = 0
        for r in indices {
            for p in 0..<t {
                ids.append(d.inputIDs[r * t + p])
                tokens += Int(d.attentionMask[r * t + p])
                let label = p + 1 < t ? Int64(d.labels[r * t + p + 1]) : Int64(TokenData.ignoreIndex)
                if label != Int64(TokenData.ignoreIndex) { targets += 1 }
                labels.append(label)
            }
        }
        return Batch(ids: ids, labels: labels, rows: indices.count, targets: targets, tokens: tokens)
    }

    /// Forward (and backward when `gradScale` is given) of one micro-batch: the summed loss.
    private func run(_ b: Batch, seq: Int, gradScale: Float?) throws -> Double {
        try model.setBatch(inputIDs: b.ids, rows: b.rows, seq: seq)
        try model.forward()
        try ctx.uploadLabels(b.labels, to: model.labels)
        let r = try ctx.tokenCrossEntropy(rows: b.rows * seq, classes: weights.config.vocabSize, logits: model.logits, labels: model.labels,
                                          gradScale: gradScale ?? 0, dlogits: model.logits)
        if gradScale != nil { try model.backward() }
        return r.lossSum
    }

    /// Mean loss over every row of `d` (forward only, in --batch-size micro-batches).
    public func loss(_ d: TokenData) throws -> Double {
        for a in adapters { try a.prepare(ctx) }
        var sum = 0.0, count = 0
        var start = 0
        while start < d.rows {
            let b = Self.batch(d, rows: Array(0..<d.rows)[start..<min(d.rows, start + model.maxRows)])
            sum += try run(b, seq: d.sequenceLength, gradScale: nil)
            count += b.targets
            start += model.maxRows
        }
        return sum / Double(max(count, 1))
    }

    /// Logits [rows, seq, vocab] of the adapted model on `d` (for checks and tests).
    public func logits(_ d: TokenData) throws -> [Float] {
        for a in adapters { try a.prepare(ctx) }
        var out: [Float] = []
        var start = 0
        let n = d.sequenceLength * weights.config.vocabSize
        while start < d.rows {
            let rows = Array(0..<d.rows)[start..<min(d.rows, start + model.maxRows)]
            let b = Self.batch(d, rows: rows)
            try model.setBatch(inputIDs: b.ids, rows: b.rows, seq: d.sequenceLength)
            try model.forward()
            out += try ctx.download(model.logits).prefix(rows.count * n)
            start += model.maxRows
        }
        return out
    }

    var outputPolicy: OutputPolicy {
        OutputPolicy(overwrite: options.overwrite,
                     inputs: [options.model, options.data, device.plugin.path] + [options.evalData, options.initPath].compactMap { $0 })
    }

    func checkOutputs() throws {
        let outputs = [options.output, options.lossCSV].compactMap { $0 }
        try OutputGuard.checkDistinct(outputs)
        if let out = options.output { try OutputGuard.check(out, kind: .directory, policy: outputPolicy) }
        if let csv = options.lossCSV { try OutputGuard.check(csv, kind: .textFile, policy: outputPolicy) }
    }

    /// The optimizer steps of the run: each a list of micro-batches (row indices).
    func schedule() -> [[ArraySlice<Int>]] {
        let n = data.rows, bs = min(options.batchSize, n), k = options.gradAccum
        var steps: [[ArraySlice<Int>]] = []
        var epoch = 0
        while true {
            if options.steps == nil && epoch == options.epochs { break }
            let order = options.shuffle ? shuffler.shuffle(n) : Array(0..<n)
            let micro = stride(from: 0, to: n, by: bs).map { order[$0..<min(n, $0 + bs)] }
            for s in stride(from: 0, to: micro.count, by: k) {
                steps.append(Array(micro[s..<min(micro.count, s + k)]))
                if let total = options.steps, steps.count == total { return steps }
            }
            epoch += 1
        }
        return steps
    }

    public func run() throws -> TransformerTrainSummary {
        let started = Date()
        try checkOutputs()
        let plan = schedule()
        let total = plan.count
        let seq = data.sequenceLength
        var losses: [Double] = [], evals: [TransformerTrainSummary.EvalLoss] = []
        var csv = "step,lr,loss,eval_loss,tokens_per_second\n"
        var lossLimit = Double.infinity
        var tokens = 0
        var computeSeconds = 0.0
        let progress = TrainProgress(total: total, enabled: options.showProgress)
        let parameters = adapters.flatMap(\.parameters)
        for (step, micro) in plan.enumerated() {
            try Interrupts.check()
            let stepStart = Date()
            let batches = micro.map { Self.batch(data, rows: $0) }
            let targets = batches.reduce(0) { $0 + $1.targets }
            guard targets > 0 else {
                throw TransformerError.invalidData(path: options.data, reason: "step \(step) has no label to predict (rows \(micro.flatMap { $0 }.map(String.init).joined(separator: ", ")))")
            }
            for a in adapters { try a.beginStep(ctx) }
            var sum = 0.0
            for b in batches { sum += try run(b, seq: seq, gradScale: 1 / Float(targets)) }
            for a in adapters { try a.finishGradients(ctx) }
            let loss = sum / Double(targets)
            guard loss.isFinite else { throw TrainError.diverged(step: step, loss: loss, limit: nil) }
            guard loss <= lossLimit else { throw TrainError.diverged(step: step, loss: loss, limit: lossLimit) }
            if step == 0 { lossLimit = options.maxLossGrowth * max(loss, log(Double(weights.config.vocabSize))) }
            if let maxNorm = options.maxGradNorm {
                // torch.nn.utils.clip_grad_norm_: one norm over every gradient, coefficient clamped to 1.
                var squares = 0.0
                for p in parameters { squares += try ctx.sumSquares(p.grad) }
                let coefficient = min(1, maxNorm / (squares.squareRoot() + 1e-6))
                if coefficient < 1 { for p in parameters { try ctx.scale(p.grad, by: Float(coefficient)) } }
            }
            let lr = options.lr * options.schedule.factor(step: step, total: total, warmup: options.warmupSteps)
            for p in parameters {
                try ctx.adamw(count: p.count, p: p.value, g: p.grad, m: p.m, v: p.v, lr: Float(lr), beta1: Float(options.beta1),
                              beta2: Float(options.beta2), eps: Float(options.eps), weightDecay: Float(options.weightDecay), t: Int64(step + 1))
            }
            let stepTokens = batches.reduce(0) { $0 + $1.tokens }
            tokens += stepTokens
            let seconds = Date().timeIntervalSince(stepStart)
            computeSeconds += seconds
            losses.append(loss)
            var evalText = ""
            if let evalData, (options.evalEvery > 0 && (step + 1) % options.evalEvery == 0) || step == total - 1 {
                let e = try self.loss(evalData)
                evals.append(.init(step: step + 1, loss: e))
                evalText = "\(e)"
            }
            csv += "\(step),\(lr),\(loss),\(evalText),\(Double(stepTokens) / max(seconds, 1e-9))\n"
            progress.update(step: step + 1, loss: loss, tokensPerSecond: Double(tokens) / max(computeSeconds, 1e-9))
        }
        progress.finish()
        if options.output != nil, let bad = try firstNonFiniteParameter() { throw TrainError.nonFiniteParameter(step: total - 1, name: bad) }
        if let path = options.lossCSV {
            let f = try OutputFile(path: path, kind: .textFile, policy: outputPolicy)
            try f.write(Array(csv.utf8))
            try f.commit(sync: false)
        }
        if let out = options.output { try save(to: out) }
        return TransformerTrainSummary(method: options.method, plugin: device.plugin.name, device: device.label, steps: total, lr: options.lr,
                                       firstLoss: losses.first ?? .nan, finalLoss: losses.last ?? .nan, losses: losses, evalLosses: evals,
                                       trainParameters: trainParameterCount, tokensPerSecond: Double(tokens) / max(computeSeconds, 1e-9),
                                       seconds: Date().timeIntervalSince(started), output: options.output, lossCsv: options.lossCSV)
    }

    func firstNonFiniteParameter() throws -> String? {
        for a in adapters {
            for p in a.parameters where try ctx.download(p.value).contains(where: { !$0.isFinite }) { return "\(a.path).\(p.name)" }
        }
        return nil
    }

    /// adapter_config.json of the saved adapter (or the OP checkpoint's peft_config).
    var peftConfig: JSONValue {
        .object([
            ("alpha_pattern", .object([])), ("base_model_name_or_path", .string(options.model)), ("bias", .string("none")),
            ("fan_in_fan_out", .bool(false)), ("inference_mode", .bool(true)), ("init_lora_weights", .bool(true)),
            ("lora_alpha", .double(options.alpha)), ("lora_dropout", .double(0)), ("modules_to_save", .null),
            ("peft_type", .string("LORA")), ("r", .int(Int64(options.rank))), ("rank_pattern", .object([])),
            ("target_modules", .array(TransformerTrainOptions.moduleNames.filter(options.targetModules.contains).map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")), ("use_dora", .bool(options.method.usesMagnitude)), ("use_rslora", .bool(options.useRSLoRA)),
        ])
    }

    /// Current A, B of every adapted module.
    public func materialize() throws -> [MaterializedModule] { try adapters.map { try $0.materialize(ctx) } }

    /// PEFT adapter (lora) or OP checkpoint v1 (op-lora).
    public func save(to path: String) throws {
        if options.method.usesHypernetwork {
            var tensors: [(name: String, data: TensorData)] = []
            var shapes: [(String, JSONValue)] = []
            for a in adapters {
                for p in a.parameters {
                    tensors.append(("base_model.model.\(a.path).\(p.name)", .memory(values: try ctx.download(p.value), shape: p.shape)))
                }
                if let offset = try a.offsetValues(ctx) {
                    tensors.append(("base_model.model.\(a.path).op_mlp.magnitude_offset", .memory(values: offset, shape: [a.outF])))
                }
                shapes.append((a.path, .array([.int(Int64(a.outF)), .int(Int64(a.inF))])))
            }
            let config: JSONValue = .object([
                ("format", .string("op-lora")), ("format_version", .int(1)), ("peft_config", peftConfig),
                ("mlp", .object([("hidden", .int(Int64(options.mlpHidden))), ("z_dim", .int(Int64(options.zDim))), ("activation", .string("relu"))])),
            ])
            try OPCheckpointWriter.write(to: path, config: config, tensors: tensors,
                                         metadata: ["op_module_shapes": JSONWriter.serialize(.object(shapes))],
                                         compress: false, overwrite: options.overwrite, inputs: outputPolicy.inputs)
        } else {
            try PEFTAdapterWriter.write(to: path, config: peftConfig, modules: try materialize(), overwrite: options.overwrite,
                                        inputs: outputPolicy.inputs)
        }
    }
}

/// One stderr line, redrawn at most ten times a second, only when stderr is a terminal
/// (or when asked): step, loss and tokens/s.
final class TrainProgress {
    private let total: Int
    private let enabled: Bool
    private var lastDraw = 0.0
    private var line = ""

    init(total: Int, enabled: Bool?) {
        self.total = total
        self.enabled = enabled ?? (isatty(2) == 1)
    }

    func update(step: Int, loss: Double, tokensPerSecond: Double) {
        guard enabled else { return }
        // Cut to the terminal's width and cleared to the line's end, as ProgressBar does.
        let text = String(format: "train step %d/%d  loss %.4f  %.0f tokens/s", step, total, loss, tokensPerSecond)
        line = "\r" + String(text.prefix(max(1, ProgressBar.terminalColumns() - 1))) + "\u{1B}[K"
        let now = Date().timeIntervalSince1970
        if now - lastDraw > 0.1 || step == total {
            lastDraw = now
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    func finish() {
        guard enabled, !line.isEmpty else { return }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
