import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// `opconvert train`: fine-tunes adapters on a frozen Linear+ReLU network with AdamW, all
/// compute in a kernel plugin. Deterministic for a seed on the CPU plugin.
public final class Trainer {
    public let options: TrainOptions
    public let network: BaseNetwork
    public let data: Dataset
    public let plugin: KernelPlugin
    /// The plugin and device the run uses (from options.device / options.plugin).
    public let device: SelectedDevice
    package let ctx: KernelContext
    package let adapters: [LayerAdapter]
    private let adapterOf: [Int: LayerAdapter]
    private let weights: [DeviceBuffer]
    private let biases: [DeviceBuffer]
    private var rng: SeededRandom
    /// A separate stream for the data order, so every method sees the same batches.
    private var shuffler: SeededRandom

    /// `device` nil: chosen from options.device and options.plugin (after the inputs are
    /// checked, so a bad input is reported before any device note).
    public init(options: TrainOptions, device selected: SelectedDevice? = nil) throws {
        self.options = options
        try options.validate()
        network = try BaseNetwork.load(options.base)
        data = try Dataset.load(options.data)
        guard data.features == network.layers[0].inFeatures else {
            throw TrainError.invalidData(path: options.data, reason: "inputs have \(data.features) features but the first layer takes \(network.layers[0].inFeatures)")
        }
        let classes = network.layers.last!.outFeatures
        if let bad = data.labels.first(where: { $0 < 0 || $0 >= Int64(classes) }) {
            throw TrainError.invalidData(path: options.data, reason: "label \(bad) is outside [0, \(classes)) (the last layer has \(classes) outputs)")
        }
        let names = network.layers.map(\.name)
        let chosen = options.layers ?? names
        for n in chosen where !names.contains(n) {
            throw TrainError.invalidOption("--layers: no layer named \"\(n)\" in \(options.base) (layers: \(names.joined(separator: ", ")))")
        }
        try Self.checkSizes(options, network: network, adapted: chosen, rows: min(options.batchSize, data.count))
        device = try selected ?? DeviceSelection.select(options.device, pluginPath: options.plugin)
        plugin = device.plugin
        ctx = try device.makeContext(threads: options.threads, allowTF32: options.allowTF32)
        rng = SeededRandom(seed: options.seed)
        shuffler = SeededRandom(seed: options.seed ^ 0xD1CE_5EED)
        var list: [LayerAdapter] = []
        var ws: [DeviceBuffer] = [], bs: [DeviceBuffer] = []
        for (i, layer) in network.layers.enumerated() {
            let w = try ctx.alloc(count: layer.weight.count)
            try ctx.upload(layer.weight, to: w)
            let b = try ctx.alloc(count: layer.bias.count)
            try ctx.upload(layer.bias, to: b)
            ws.append(w)
            bs.append(b)
            if chosen.contains(layer.name) {
                list.append(try LayerAdapter(ctx, layer: i, base: layer, method: options.method, rank: options.rank, alpha: options.alpha,
                                             hidden: options.mlpHidden, zDim: options.zDim, rng: &rng))
            }
        }
        adapters = list
        weights = ws
        biases = bs
        adapterOf = Dictionary(uniqueKeysWithValues: list.map { ($0.layer, $0) })
    }

    /// Refuses a rank no adapted layer can hold and buffers too large for the kernels,
    /// before anything is allocated (the products could overflow or ask for terabytes).
    static func checkSizes(_ o: TrainOptions, network: BaseNetwork, adapted: [String], rows: Int) throws {
        for layer in network.layers {
            _ = try TrainingLimits.elements([rows, max(layer.outFeatures, layer.inFeatures)], "--batch-size \(o.batchSize) at layer \(layer.name)")
            guard adapted.contains(layer.name) else { continue }
            let most = min(layer.outFeatures, layer.inFeatures)
            guard o.rank <= most else {
                throw TrainError.invalidOption("--rank \(o.rank) is larger than layer \(layer.name) allows: its weight is [\(layer.outFeatures), \(layer.inFeatures)], so at most \(most)")
            }
            guard o.method.usesHypernetwork else { continue }
            let generated = try TrainingLimits.elements([o.rank, layer.inFeatures + layer.outFeatures], "--rank \(o.rank) at layer \(layer.name)")
            _ = try TrainingLimits.elements([generated, o.mlpHidden], "--mlp-hidden \(o.mlpHidden) at layer \(layer.name)")
            _ = try TrainingLimits.elements([o.zDim, o.mlpHidden], "--z-dim \(o.zDim) with --mlp-hidden \(o.mlpHidden)")
        }
    }

    public var trainParameterCount: Int { adapters.reduce(0) { $0 + $1.trainParameterCount } }
    public var inferenceParameterCount: Int { adapters.reduce(0) { $0 + $1.inferenceParameterCount } }

    /// Activations of one batch: pre-activations z_l and inputs a_l per layer.
    package final class Workspace {
        var input: DeviceBuffer
        var pre: [DeviceBuffer]
        var act: [DeviceBuffer]
        var grad: [DeviceBuffer]
        var labels: DeviceBuffer?
        init(_ ctx: KernelContext, network: BaseNetwork, rows: Int) throws {
            input = try ctx.alloc(count: rows * network.layers[0].inFeatures)
            pre = try network.layers.map { try ctx.alloc(count: rows * $0.outFeatures) }
            act = try network.layers.map { try ctx.alloc(count: rows * $0.outFeatures) }
            grad = try network.layers.map { try ctx.alloc(count: rows * max($0.outFeatures, $0.inFeatures)) }
        }
    }

    private func weight(_ l: Int) -> DeviceBuffer { adapterOf[l]?.effective ?? weights[l] }

    /// Forward through the network; returns the logits buffer (pre of the last layer).
    private func forward(_ ws: Workspace, rows: Int) throws -> DeviceBuffer {
        var input = ws.input
        for (l, layer) in network.layers.enumerated() {
            try ctx.gemm(transA: false, transB: true, m: rows, n: layer.outFeatures, k: layer.inFeatures, alpha: 1,
                         a: input, lda: layer.inFeatures, b: weight(l), ldb: layer.inFeatures, beta: 0, c: ws.pre[l], ldc: layer.outFeatures)
            try ctx.addRowVector(rows: rows, cols: layer.outFeatures, v: biases[l], x: ws.pre[l])
            if l < network.layers.count - 1 {
                try ctx.reluForward(ws.pre[l].slice(offset: 0, count: rows * layer.outFeatures), into: ws.act[l])
                input = ws.act[l]
            }
        }
        return ws.pre[network.layers.count - 1]
    }

    private func backward(_ ws: Workspace, rows: Int, dlogits: DeviceBuffer) throws {
        let lowest = adapters.map(\.layer).min() ?? 0
        var dz = dlogits
        for l in stride(from: network.layers.count - 1, through: lowest, by: -1) {
            let layer = network.layers[l]
            let input = l == 0 ? ws.input : ws.act[l - 1]
            if let adapter = adapterOf[l] {
                try ctx.gemm(transA: true, transB: false, m: layer.outFeatures, n: layer.inFeatures, k: rows, alpha: 1,
                             a: dz, lda: layer.outFeatures, b: input, ldb: layer.inFeatures, beta: 0, c: adapter.dEffective, ldc: layer.inFeatures)
            }
            if l > lowest {
                let da = ws.grad[l - 1]
                try ctx.gemm(transA: false, transB: false, m: rows, n: layer.inFeatures, k: layer.outFeatures, alpha: 1,
                             a: dz, lda: layer.outFeatures, b: weight(l), ldb: layer.inFeatures, beta: 0, c: da, ldc: layer.inFeatures)
                try ctx.reluBackward(x: ws.pre[l - 1].slice(offset: 0, count: rows * layer.inFeatures), dy: da, dx: da)
                dz = da
            }
        }
    }

    private func upload(batch indices: ArraySlice<Int>, into ws: Workspace) throws {
        let d = data.features
        var x = [Float](repeating: 0, count: indices.count * d)
        var y = [Int64](repeating: 0, count: indices.count)
        for (row, i) in indices.enumerated() {
            for j in 0..<d { x[row * d + j] = data.inputs[i * d + j] }
            y[row] = data.labels[i]
        }
        try ctx.upload(x, to: ws.input)
        ws.labels = try ctx.uploadLabels(y)
    }

    /// One forward and backward pass: leaves every parameter's gradient of the batch's mean
    /// loss in its `grad` buffer and returns the loss and the number of correct rows.
    package func gradients(batch: ArraySlice<Int>, workspace ws: Workspace, dlogits: DeviceBuffer) throws -> (Float, Int) {
        let rows = batch.count
        try upload(batch: batch, into: ws)
        for a in adapters { try a.forward(ctx) }
        let logits = try forward(ws, rows: rows)
        let result = try ctx.softmaxCrossEntropy(rows: rows, classes: network.layers.last!.outFeatures, logits: logits,
                                                 labels: ws.labels!, dlogits: dlogits)
        try backward(ws, rows: rows, dlogits: dlogits)
        for a in adapters { try a.backward(ctx) }
        return (result.loss, result.correct)
    }

    /// Mean loss of the given rows with the current parameters (forward only).
    package func loss(batch: ArraySlice<Int>, workspace ws: Workspace, dlogits: DeviceBuffer) throws -> Float {
        try upload(batch: batch, into: ws)
        for a in adapters { try a.forward(ctx) }
        let logits = try forward(ws, rows: batch.count)
        return try ctx.softmaxCrossEntropy(rows: batch.count, classes: network.layers.last!.outFeatures, logits: logits,
                                           labels: ws.labels!, dlogits: dlogits).loss
    }

    package func makeWorkspace(rows: Int) throws -> (Workspace, DeviceBuffer) {
        (try Workspace(ctx, network: network, rows: rows), try ctx.alloc(count: rows * network.layers.last!.outFeatures))
    }

    /// Runs the whole training; writes the loss CSV and the output as configured.
    /// The rule for this run's outputs: clear of the base, the data and the plugin.
    var outputPolicy: OutputPolicy {
        OutputPolicy(overwrite: options.overwrite, inputs: [options.base, options.data, plugin.path])
    }

    /// Refuses unusable outputs before training starts (they are checked again when written).
    func checkOutputs() throws {
        let outputs = [options.output, options.lossCSV].compactMap { $0 }
        try OutputGuard.checkDistinct(outputs)
        if let out = options.output { try OutputGuard.check(out, kind: .directory, policy: outputPolicy) }
        if let csv = options.lossCSV { try OutputGuard.check(csv, kind: .textFile, policy: outputPolicy) }
    }

    public func run() throws -> TrainSummary {
        let started = Date()
        try checkOutputs()
        // A batch larger than the data is the whole data: same steps, no oversized buffers.
        let n = data.count, bs = min(options.batchSize, data.count)
        let stepsPerEpoch = (n + bs - 1) / bs
        let (total, overflow) = stepsPerEpoch.multipliedReportingOverflow(by: options.epochs)
        guard !overflow else { throw TrainError.invalidOption("--epochs \(options.epochs): \(stepsPerEpoch) steps per epoch overflow the step count") }
        let ws = try Workspace(ctx, network: network, rows: bs)
        let classes = network.layers.last!.outFeatures
        let dlogits = try ctx.alloc(count: bs * classes)
        // Divergence: a loss above this (set after the first step) stops the run.
        var lossLimit = Double.infinity
        var csv = "step,epoch,lr,loss,accuracy\n"
        var step = 0
        var firstLoss = Double.nan
        var epochLoss = 0.0, epochCorrect = 0
        let progress = ProgressBar(label: "train", totalItems: total, totalBytes: total, enabled: options.showProgress,
                                   phase: "training", unit: "steps", countsBytes: false)
        var epochSeconds: [Double] = []
        for epoch in 0..<options.epochs {
            let epochStart = Date()
            let order = shuffler.shuffle(n)
            epochLoss = 0
            epochCorrect = 0
            for s in 0..<stepsPerEpoch {
                try Interrupts.check()
                let batch = order[(s * bs)..<min(n, (s + 1) * bs)]
                let rows = batch.count
                let (loss, correct) = try gradients(batch: batch, workspace: ws, dlogits: dlogits)
                guard loss.isFinite else { throw TrainError.diverged(step: step, loss: Double(loss), limit: nil) }
                guard Double(loss) <= lossLimit else { throw TrainError.diverged(step: step, loss: Double(loss), limit: lossLimit) }
                if step == 0 {
                    firstLoss = Double(loss)
                    let reference = max(firstLoss, log(Double(classes)))
                    // One class: the loss is always 0, there is nothing to grow from.
                    if reference > 0 { lossLimit = options.maxLossGrowth * reference }
                }
                epochLoss += Double(loss) * Double(rows)
                epochCorrect += correct
                let lr = options.lr * options.schedule.factor(step: step, total: total, warmup: options.warmupSteps)
                for a in adapters {
                    for p in a.parameters {
                        try ctx.adamw(count: p.count, p: p.value, g: p.grad, m: p.m, v: p.v, lr: Float(lr), beta1: Float(options.beta1),
                                      beta2: Float(options.beta2), eps: Float(options.eps), weightDecay: Float(options.weightDecay), t: Int64(step + 1))
                    }
                }
                if options.lossCSV != nil { csv += "\(step),\(epoch),\(lr),\(loss),\(Double(correct) / Double(rows))\n" }
                step += 1
                progress.advance(bytes: 1)
            }
            epochSeconds.append(Date().timeIntervalSince(epochStart))
        }
        progress.finish()
        // The last update came after the last loss check: never save a blown-up parameter.
        if options.output != nil, let bad = try firstNonFiniteParameter() { throw TrainError.nonFiniteParameter(step: step - 1, name: bad) }
        if let path = options.lossCSV {
            let f = try OutputFile(path: path, kind: .textFile, policy: outputPolicy)
            try f.write(Array(csv.utf8))
            try f.commit(sync: false)
        }
        if let out = options.output { try save(to: out) }
        return TrainSummary(method: options.method, plugin: plugin.name, device: device.label, steps: step, epochs: options.epochs, lr: options.lr,
                            firstLoss: firstLoss, finalLoss: epochLoss / Double(n), finalAccuracy: Double(epochCorrect) / Double(n),
                            trainParameters: trainParameterCount, inferenceParameters: inferenceParameterCount,
                            seconds: Date().timeIntervalSince(started),
                            secondsPerEpoch: epochSeconds.reduce(0, +) / Double(max(1, epochSeconds.count)),
                            output: options.output, lossCsv: options.lossCSV)
    }

    /// The checkpoint name of the first parameter holding a NaN or Inf, if any.
    func firstNonFiniteParameter() throws -> String? {
        for a in adapters {
            for p in a.parameters {
                if try ctx.download(p.value).contains(where: { !$0.isFinite }) { return "\(a.name).\(p.name)" }
            }
        }
        return nil
    }

    /// Logits of the adapted model for the given inputs (rows of `data.features`).
    public func predict(_ inputs: [Float]) throws -> [Float] {
        let rows = inputs.count / data.features
        let ws = try Workspace(ctx, network: network, rows: rows)
        try ctx.upload(inputs, to: ws.input)
        for a in adapters { try a.forward(ctx) }
        let logits = try forward(ws, rows: rows)
        let all = try ctx.download(logits)
        return Array(all.prefix(rows * network.layers.last!.outFeatures))
    }

    /// The adapter config that the saved adapter (or the OP checkpoint's peft_config) has.
    var peftConfig: JSONValue {
        .object([
            ("alpha_pattern", .object([])), ("base_model_name_or_path", .string(options.base)), ("bias", .string("none")),
            ("fan_in_fan_out", .bool(false)), ("inference_mode", .bool(true)), ("init_lora_weights", .bool(true)),
            ("lora_alpha", .double(options.alpha)), ("lora_dropout", .double(0)), ("modules_to_save", .null),
            ("peft_type", .string("LORA")), ("r", .int(Int64(options.rank))), ("rank_pattern", .object([])),
            ("target_modules", .array(adapters.map { .string($0.name) })), ("task_type", .null),
            ("use_dora", .bool(options.method.usesMagnitude)), ("use_rslora", .bool(false)),
        ])
    }

    /// PEFT adapter (lora/dora) or OP checkpoint v1 (op-lora/op-dora).
    public func save(to path: String) throws {
        if options.method.usesHypernetwork {
            var tensors: [(name: String, data: TensorData)] = []
            var shapes: [(String, JSONValue)] = []
            for a in adapters {
                let prefix = "base_model.model.\(a.name)."
                for p in a.parameters {
                    tensors.append((prefix + p.name, .memory(values: try ctx.download(p.value), shape: p.shape)))
                }
                if !a.offsetHost.isEmpty {
                    tensors.append((prefix + "op_mlp.magnitude_offset", .memory(values: a.offsetHost, shape: [a.outF])))
                }
                shapes.append((a.name, .array([.int(Int64(a.outF)), .int(Int64(a.inF))])))
            }
            let config: JSONValue = .object([
                ("format", .string("op-lora")), ("format_version", .int(1)), ("peft_config", peftConfig),
                ("mlp", .object([("hidden", .int(Int64(options.mlpHidden))), ("z_dim", .int(Int64(options.zDim))), ("activation", .string("relu"))])),
            ])
            try OPCheckpointWriter.write(to: path, config: config, tensors: tensors,
                                         metadata: ["op_module_shapes": JSONWriter.serialize(.object(shapes))],
                                         compress: false, overwrite: options.overwrite, inputs: outputPolicy.inputs)
        } else {
            try PEFTAdapterWriter.write(to: path, config: peftConfig, modules: try adapters.map { try $0.materialize(ctx) },
                                            overwrite: options.overwrite, inputs: outputPolicy.inputs)
        }
    }
}
