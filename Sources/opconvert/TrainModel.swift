import ArgumentParser
import Foundation
import OpConvertKit

/// The flags of `train --model DIR` (adapters on a LLaMA-family causal LM).
struct ModelTrainOptions: ParsableArguments {
    @Option(help: "Hugging Face model directory (LLaMA, Mistral, Qwen2) to adapt instead of --base.", completion: .directory) var model: String?
    @Option(help: "With --model: comma-separated projections to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; default q_proj,v_proj).")
    var targetModules: String?
    @Flag(help: "With --model: scale alpha / sqrt(r) (rsLoRA) instead of alpha / r.") var useRslora = false
    @Option(name: .customLong("init"), help: "With --model: start from this PEFT adapter (lora) or OP checkpoint (op-lora), with the same rank and targets.", completion: .directory)
    var initPath: String?
    @Option(help: "With --model: optimizer steps (instead of --epochs; the data is cycled).") var steps: Int?
    @Flag(help: "With --model: take rows in file order.") var noShuffle = false
    @Option(help: "With --model: micro-batches per optimizer step.") var gradAccum = 1
    @Option(help: "With --model: clip the gradients' total norm to this (as torch's clip_grad_norm_).") var maxGradNorm: Double?
    @Option(help: "With --model: token rows to report the loss of (in the loss CSV and the JSON).", completion: .file(extensions: ["safetensors", "jsonl"])) var evalData: String?
    @Option(help: "With --model: evaluate every N steps (0: after the last one only).") var evalEvery = 0
    @Flag(help: "With --model: keep only each layer's input and recompute its forward in the backward pass (less memory).")
    var checkpointActivations = false

    /// Refuses --model-only flags in the Linear+ReLU mode.
    func refuseWithoutModel() throws {
        let given: [(Bool, String)] = [
            (targetModules != nil, "--target-modules"), (useRslora, "--use-rslora"), (initPath != nil, "--init"), (steps != nil, "--steps"),
            (noShuffle, "--no-shuffle"), (gradAccum != 1, "--grad-accum"), (maxGradNorm != nil, "--max-grad-norm"),
            (evalData != nil, "--eval-data"), (evalEvery != 0, "--eval-every"), (checkpointActivations, "--checkpoint-activations"),
        ]
        if let flag = given.first(where: \.0)?.1 { throw ValidationError("\(flag) is for --model runs.") }
    }
}

extension Finetune {
    func validateModelMode() throws {
        if base != nil { throw ValidationError("--model and --base are exclusive: give one.") }
        if data == nil { throw ValidationError("--data is required.") }
        if layers != nil { throw ValidationError("--layers is for --base networks; with --model use --target-modules.") }
        if lrSweep != nil { throw ValidationError("--lr-sweep is for --base networks.") }
        _ = try parseDevice(device)
        try asUsageError { try modelOptions().validate() }
    }

    func modelOptions() -> TransformerTrainOptions {
        var o = TransformerTrainOptions(model: model.model!, data: data!)
        o.output = output
        o.method = method
        if let t = model.targetModules { o.targetModules = t.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        o.rank = rank
        o.alpha = alpha
        o.useRSLoRA = model.useRslora
        o.mlpHidden = mlpHidden
        o.zDim = zDim
        o.initPath = model.initPath
        o.lr = lr
        o.weightDecay = weightDecay
        o.schedule = schedule
        o.warmupSteps = warmupSteps
        o.batchSize = batchSize ?? 8
        o.gradAccum = model.gradAccum
        o.epochs = epochs
        o.steps = model.steps
        o.shuffle = !model.noShuffle
        o.maxGradNorm = model.maxGradNorm
        o.evalData = model.evalData
        o.evalEvery = model.evalEvery
        o.checkpointActivations = model.checkpointActivations
        o.seed = seed
        o.lossCSV = lossCsv
        o.plugin = plugin
        o.device = (try? DeviceChoice(parsing: device)) ?? .auto  // checked in validate()
        o.allowTF32 = tf32
        o.threads = threads
        o.overwrite = overwrite
        o.maxLossGrowth = maxLossGrowth
        o.showProgress = common.json ? false : common.progress
        return o
    }

    func runModelMode() throws {
        let trainer = try TransformerTrainer(options: modelOptions())
        announce(trainer.device, json: common.json)
        let s = try trainer.run()
        if common.json {
            var j = s  // the contract's absolute paths
            (j.output, j.lossCsv) = (j.output.map(FileSystem.absolute), j.lossCsv.map(FileSystem.absolute))
            return try printJSON(j)
        }
        let eval = s.evalLosses.last.map { ", eval loss \(String(format: "%.4f", $0.loss))" } ?? ""
        print("trained \(s.method.rawValue) (\(s.trainParameters) trainable) for \(s.steps) steps on \(s.device) (\(s.plugin)): loss \(String(format: "%.4f", s.firstLoss)) -> \(String(format: "%.4f", s.finalLoss))\(eval), \(String(format: "%.0f", s.tokensPerSecond)) tokens/s" + (s.output.map { "; saved \($0)" } ?? "; not saved (no -o)"))
    }
}
