import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Settings of `opconvert train --model DIR`: adapters on a LLaMA-family causal LM.
public struct TransformerTrainOptions: Sendable {
    /// The PEFT names of the projections an adapter may target.
    public static let moduleNames = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public var model: String
    public var data: String
    public var output: String?
    public var method: AdapterMethod = .lora
    public var targetModules = ["q_proj", "v_proj"]
    public var rank = 8
    public var alpha: Double = 16
    public var useRSLoRA = false
    public var mlpHidden = 32
    public var zDim = 32
    /// PEFT adapter or OP checkpoint to start from (same method, rank and targets).
    public var initPath: String?
    public var lr: Double = 1e-4
    public var weightDecay: Double = 0
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var schedule: LRSchedule = .constant
    public var warmupSteps = 0
    /// Rows per micro-batch; an optimizer step takes `gradAccum` micro-batches.
    public var batchSize = 8
    public var gradAccum = 1
    public var epochs = 1
    /// Optimizer steps; when set, replaces `epochs` (the data is cycled as needed).
    public var steps: Int?
    public var shuffle = true
    public var maxGradNorm: Double?
    public var evalData: String?
    /// Evaluate every N steps (and after the last); 0: only after the last step.
    public var evalEvery = 0
    /// Recompute each layer's forward in the backward pass instead of keeping its activations.
    public var checkpointActivations = false
    public var seed: UInt64 = 0
    public var lossCSV: String?
    public var plugin: String?
    public var device: DeviceChoice = .auto
    public var allowTF32 = false
    public var threads = 0
    public var overwrite = false
    public var showProgress: Bool?
    public var maxLossGrowth: Double = TrainOptions.defaultMaxLossGrowth

    public init(model: String, data: String) {
        self.model = model
        self.data = data
    }

    /// The LoRA scale s: alpha / r, or alpha / sqrt(r) with rsLoRA (as PEFT).
    public var scale: Double { useRSLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank) }

    /// Checks what needs no file (the CLI calls this in validate() for exit 64).
    public func validate() throws {
        for (value, flag) in [(rank, "--rank"), (batchSize, "--batch-size"), (epochs, "--epochs"), (mlpHidden, "--mlp-hidden"),
                              (zDim, "--z-dim"), (gradAccum, "--grad-accum")] {
            try TrainingLimits.requirePositive(value, flag)
        }
        if let steps { try TrainingLimits.requirePositive(steps, "--steps") }
        guard evalEvery >= 0 else { throw TrainError.invalidOption("--eval-every must be 0 (only at the end) or more, not \(evalEvery)") }
        guard warmupSteps >= 0 else { throw TrainError.invalidOption("--warmup-steps must be 0 or more, not \(warmupSteps)") }
        guard threads >= 0 else { throw TrainError.invalidOption("--threads must be 0 (the plugin's default) or more, not \(threads)") }
        try TrainingLimits.requirePositiveRate(lr, "--lr")
        guard alpha.isFinite, alpha > 0 else { throw TrainError.invalidOption("--alpha must be a positive number, not \(alpha)") }
        guard weightDecay.isFinite, weightDecay >= 0, Float(weightDecay).isFinite else {
            throw TrainError.invalidOption("--weight-decay must be a finite number >= 0, not \(weightDecay)")
        }
        if let maxGradNorm, !(maxGradNorm > 0 && maxGradNorm.isFinite) {
            throw TrainError.invalidOption("--max-grad-norm must be a positive finite number, not \(maxGradNorm)")
        }
        for (beta, name) in [(beta1, "beta1"), (beta2, "beta2")] where !(beta >= 0 && beta < 1) {
            throw TrainError.invalidOption("AdamW \(name) must be in [0, 1), not \(beta)")
        }
        guard eps.isFinite, eps > 0, Float(eps) > 0 else { throw TrainError.invalidOption("AdamW eps must be a positive f32 number, not \(eps)") }
        guard maxLossGrowth > 1 else {
            throw TrainError.invalidOption("--max-loss-growth must be a number > 1 (inf: stop only on a non-finite loss), not \(maxLossGrowth)")
        }
        guard !targetModules.isEmpty else { throw TrainError.invalidOption("--target-modules is empty") }
        for name in targetModules where !Self.moduleNames.contains(name) {
            throw TrainError.invalidOption("--target-modules: unknown module \"\(name)\" (LLaMA-family projections: \(Self.moduleNames.joined(separator: ", ")))")
        }
        if Set(targetModules).count != targetModules.count { throw TrainError.invalidOption("--target-modules names a module twice") }
    }
}

/// What one `train --model` run did.
public struct TransformerTrainSummary: Codable, Sendable {
    public var method: AdapterMethod
    public var plugin: String
    public var device: String
    public var steps: Int
    public var lr: Double
    public var firstLoss: Double
    public var finalLoss: Double
    /// The per-step mean losses (before each step's update).
    public var losses: [Double]
    /// (step after which it was measured, loss) for --eval-data.
    public var evalLosses: [EvalLoss]
    public var trainParameters: Int
    public var tokensPerSecond: Double
    public var seconds: Double
    public var output: String?
    public var lossCsv: String?

    public struct EvalLoss: Codable, Sendable {
        public var step: Int
        public var loss: Double
    }
}
