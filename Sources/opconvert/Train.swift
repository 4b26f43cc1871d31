import ArgumentParser
import Foundation
import OpConvertKit

extension AdapterMethod: ExpressibleByArgument {}
extension LRSchedule: ExpressibleByArgument {}

/// `opconvert train` (fine-tuning, the default) and `opconvert train factorize`. The group
/// itself takes no options, so each subcommand owns its flags (--lr, --rank, ...).
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune adapters over a kernel plugin, or run the matrix factorization study.",
        subcommands: [Finetune.self, Factorize.self],
        defaultSubcommand: Finetune.self
    )
}

struct Finetune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune",
        abstract: "Fine-tune LoRA, DoRA, OP-LoRA or OP-DoRA adapters on a frozen Linear+ReLU network or a LLaMA-family model (--model; the default of `train`).",
        discussion: """
        The compute runs in a kernel plugin loaded at run time, chosen with --device: auto \
        (the default) uses the CUDA plugin next to the executable when its probe finds a \
        usable GPU, else the CPU plugin, and says which on stderr (JSON: "device"); cpu and \
        cuda[:N] insist (exit 69 when CUDA cannot run, with the probe's reason). --plugin \
        PATH loads any plugin instead (--device cuda:N then picks its device N). BASE holds \
        <layer>.weight [out, in] and <layer>.bias tensors (order: metadata key \
        opconvert.layers, else natural name order), with ReLU between layers. DATA holds \
        `inputs` f32 [N, D] and `labels` i64 [N]. Initialisation follows the OP-LoRA paper's \
        appendix C.1. op-* methods save an OP checkpoint (op_config.json + \
        op_model.safetensors), lora/dora a PEFT adapter; `opconvert merge BASE OUT` folds \
        either into the base. --lr-sweep trains every --methods at every rate and writes \
        sweep.csv, sweep.md and sweep.svg (final loss against learning rate). Without -o \
        the run is only reported. With --model DIR (a Hugging Face LlamaForCausalLM, \
        MistralForCausalLM or Qwen2ForCausalLM directory) instead of --base, DATA holds token \
        rows (docs/transformer-training.md) and --target-modules picks the projections.
        """
    )

    @Option(help: "Base network (.safetensors).", completion: .file(extensions: ["safetensors"]))
    var base: String?

    @Option(help: "Dataset (.safetensors with `inputs` and `labels`; with --model: token rows, .safetensors or .jsonl).", completion: .file(extensions: ["safetensors", "jsonl"]))
    var data: String?

    @OptionGroup var model: ModelTrainOptions

    @Option(name: [.short, .customLong("output")], help: "Output: OP checkpoint (op-*) or PEFT adapter directory.", completion: .directory)
    var output: String?

    @Option(help: "lora, dora, op-lora or op-dora.")
    var method: AdapterMethod = .opLora

    @Option(help: "Comma-separated layers to adapt (default: all).")
    var layers: String?

    @Option(help: "LoRA rank r.") var rank = 4
    @Option(help: "LoRA alpha (scaling alpha / r).") var alpha: Double = 8
    @Option(help: "Hidden units of each OP hypernetwork.") var mlpHidden = 32
    @Option(help: "Size of each OP hypernetwork's learned input z.") var zDim = 32
    @Option(help: "Peak learning rate (AdamW).") var lr: Double = 1e-3
    @Option(help: "AdamW decoupled weight decay.") var weightDecay: Double = 0
    @Option(help: "constant, linear or cosine (after warmup).") var schedule: LRSchedule = .constant
    @Option(help: "Linear warmup steps from 0.") var warmupSteps = 0
    @Option(help: "Rows per step (default 64; with --model: rows per micro-batch, default 8).") var batchSize: Int?
    @Option(help: "Passes over the data.") var epochs = 1
    @Option(help: "Seed for initialisation and shuffling.") var seed: UInt64 = 0
    @Option(help: "Write the loss of every step to this CSV file.", completion: .file(extensions: ["csv"])) var lossCsv: String?
    @Option(help: "Kernel plugin shared library (default: chosen by --device).", completion: .file(extensions: ["so", "dylib"])) var plugin: String?
    @Option(help: ArgumentHelp("auto, cpu, cuda or cuda:N (auto: CUDA when usable, else CPU).", valueName: "device")) var device = "auto"
    @Flag(help: "Allow TF32 tensor-core GEMMs on CUDA (faster, ~1e-3 relative error); no effect on the CPU.") var tf32 = false
    @Option(help: "Threads for the plugin (0: its default).") var threads = 0
    @Option(help: ArgumentHelp("Stop with exit 1, saving nothing, when a step's loss exceeds this factor times the first step's loss (or ln(classes), if larger); inf: stop only on a NaN/Inf loss.", valueName: "factor"))
    var maxLossGrowth: Double = TrainOptions.defaultMaxLossGrowth
    @Option(help: "Comma-separated learning rates to sweep instead of one run, e.g. 1e-5,1e-4,1e-3,1e-2.") var lrSweep: String?
    @Option(help: "Methods compared by --lr-sweep.") var methods = "lora,op-lora"
    @Option(help: "Directory for the sweep's table and plot.", completion: .directory) var sweepDir = "lr-sweep"
    @Flag(help: "Replace OUTPUT if it exists.") var overwrite = false
    @Flag(help: "Train on the bundled demo network and dataset (fixtures/train; installed: PREFIX/share/opconvert/train-demo) instead of --base and --data.")
    var demo = false
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if demo && (base != nil || data != nil || model.model != nil) { throw ValidationError("--demo brings its own network and data; drop --base, --data and --model.") }
        if model.model != nil { return try validateModelMode() }
        try model.refuseWithoutModel()
        if !demo && (base == nil || data == nil) { throw ValidationError("--base and --data are required.") }
        if lrSweep != nil && output != nil { throw ValidationError("--lr-sweep writes to --sweep-dir; drop -o.") }
        _ = try sweep()
        _ = try parseDevice(device)
        try asUsageError { try options().validate() }
    }

    /// --lr-sweep's rates and --methods, or nil without --lr-sweep.
    func sweep() throws -> (lrs: [Double], methods: [AdapterMethod])? {
        guard let lrSweep else { return nil }
        let lrs = try lrSweep.split(separator: ",", omittingEmptySubsequences: false).map { s -> Double in
            guard let v = Double(s.trimmingCharacters(in: .whitespaces)), v > 0, v.isFinite, Float(v).isFinite else {
                throw ValidationError("--lr-sweep: \"\(s)\" is not a positive finite number")
            }
            return v
        }
        if let dup = LRSweep.duplicateRate(lrs) { throw ValidationError("--lr-sweep: the rate \(dup) is given twice") }
        let ms = try methods.split(separator: ",", omittingEmptySubsequences: false).map { s -> AdapterMethod in
            guard let m = AdapterMethod(rawValue: String(s)) else { throw ValidationError("--methods: unknown method \"\(s)\" (lora, dora, op-lora, op-dora)") }
            return m
        }
        return (lrs, ms)
    }

    func options() -> TrainOptions {
        // validate() made sure both are given, or --demo (run() fills them in first).
        var o = TrainOptions(base: base ?? "", data: data ?? "")
        o.output = output
        o.method = method
        o.layers = layers?.split(separator: ",").map(String.init)
        o.rank = rank
        o.alpha = alpha
        o.mlpHidden = mlpHidden
        o.zDim = zDim
        o.lr = lr
        o.weightDecay = weightDecay
        o.schedule = schedule
        o.warmupSteps = warmupSteps
        o.batchSize = batchSize ?? 64
        o.epochs = epochs
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

    func run() throws {
        try runReportingErrors(json: common.json) {
            if demo {
                var withDemo = self
                (withDemo.base, withDemo.data) = try TrainDemo.locate()
                withDemo.demo = false
                if !common.json { printError("opconvert: demo: --base \(withDemo.base!) --data \(withDemo.data!)") }
                return try withDemo.run()
            }
            if model.model != nil { return try runModelMode() }
            if let (lrs, ms) = try sweep() {
                var o = options()
                o.showProgress = false
                let result = try LRSweep.run(base: o, methods: ms, lrs: lrs, outputDirectory: sweepDir) { announce($0, json: common.json) }
                if common.json { try printJSON(result) } else {
                    print(String(decoding: FileManager.default.contents(atPath: sweepDir + "/sweep.md") ?? Data(), as: UTF8.self), terminator: "")
                    print("wrote \(result.files.joined(separator: ", "))")
                }
                return
            }
            let trainer = try Trainer(options: options())
            announce(trainer.device, json: common.json)
            let summary = try trainer.run()
            if common.json {
                var s = summary  // the contract's absolute paths
                (s.output, s.lossCsv) = (s.output.map(FileSystem.absolute), s.lossCsv.map(FileSystem.absolute))
                try printJSON(s)
            } else {
                print("trained \(summary.method.rawValue) (\(summary.trainParameters) trainable, \(summary.inferenceParameters) kept) for \(summary.steps) steps on \(summary.device) (\(summary.plugin)): loss \(String(format: "%.4f", summary.firstLoss)) -> \(String(format: "%.4f", summary.finalLoss)), accuracy \(String(format: "%.3f", summary.finalAccuracy)), \(String(format: "%.2f", summary.secondsPerEpoch)) s/epoch" + (summary.output.map { "; saved \($0)" } ?? "; not saved (no -o)"))
            }
        }
    }
}

struct Factorize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Matrix factorization study (OP-LoRA paper, appendix B.2): MF vs OP-MF vs the SVD optimum.",
        discussion: """
        Fits M ≈ B·A at rank r by SGD with linear warmup and decay, with free A and B (mf: A \
        random, B zero) and with A, B generated by two MLPs (op-mf: learned z, ReLU hidden \
        layer, the B MLP starting at zero output), and reports ‖M − BA‖²_F next to the \
        optimum Σ_{i>r} σ_i² from LAPACK's SVD. Without --target, M is a 100x100 matrix \
        uniform in [0, 1) (the paper's setup).
        """
    )

    @Option(help: "safetensors file holding the target matrix.", completion: .file(extensions: ["safetensors"])) var target: String?
    @Option(help: "Tensor to factorize (default: the first 2-D float tensor).") var tensor: String?
    @Option(help: "Random target shape ROWSxCOLS when no --target (default 100x100; at most \(TrainingLimits.maxElements) elements).") var random: String?
    @Option(help: "Rank r (at most min(rows, cols)).") var rank = 8
    @Option(help: "SGD steps (1 to \(FactorizeOptions.maxSteps)).") var steps = 1000
    @Option(help: "Peak SGD learning rate for MF (and OP-MF unless --op-lr).") var lr: Double = 1e-3
    @Option(help: "Peak SGD learning rate for OP-MF.") var opLr: Double?
    @Option(help: "Linear warmup steps.") var warmupSteps = 50
    @Option(help: "Decay after warmup: constant, linear or cosine.") var schedule: LRSchedule = .linear
    @Option(help: "Hidden units of each MLP.") var mlpHidden = 32
    @Option(help: "Size of each MLP's learned input z.") var zDim = 128
    @Option(help: "Seed.") var seed: UInt64 = 0
    @Option(help: "Methods: mf, op-mf.") var methods = "mf,op-mf"
    @Option(help: "Write the error at every step to this CSV.", completion: .file(extensions: ["csv"])) var curveCsv: String?
    @Flag(help: "Replace the --curve-csv file if it exists.") var overwrite = false
    @Option(help: "Kernel plugin shared library (default: chosen by --device).", completion: .file(extensions: ["so", "dylib"])) var plugin: String?
    @Option(help: ArgumentHelp("auto, cpu, cuda or cuda:N (auto: CUDA when usable, else CPU).", valueName: "device")) var device = "auto"
    @Flag(help: "Allow TF32 tensor-core GEMMs on CUDA; no effect on the CPU.") var tf32 = false
    @OptionGroup var common: CommonOptions

    func validate() throws {
        _ = try parseDevice(device)
        if random != nil && target != nil { throw ValidationError("--random is for runs without --target; drop one.") }
        if tensor != nil && target == nil { throw ValidationError("--tensor names a tensor of --target; give --target.") }
        try asUsageError { try options().validate() }
    }

    func options() throws -> FactorizeOptions {
        var o = FactorizeOptions()
        o.target = target
        o.tensor = tensor
        if let random {
            let dims = random.lowercased().split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
            guard dims.count == 2, let rows = dims[0], let cols = dims[1], rows > 0, cols > 0 else {
                throw ValidationError("--random expects ROWSxCOLS with positive sizes, e.g. 100x100, not \"\(random)\"")
            }
            o.randomShape = (rows, cols)
        }
        o.rank = rank
        o.steps = steps
        o.lr = lr
        o.opLR = opLr
        o.warmupSteps = warmupSteps
        o.schedule = schedule
        o.mlpHidden = mlpHidden
        o.zDim = zDim
        o.seed = seed
        o.methods = methods.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        o.plugin = plugin
        o.device = try parseDevice(device)
        o.allowTF32 = tf32
        o.curveCSV = curveCsv
        o.overwrite = overwrite
        return o
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let o = try options()
            let r = try Factorizer.run(o) { announce($0, json: common.json) }
            if common.json { try printJSON(r) } else {
                print("M: \(r.rows)x\(r.cols), rank \(r.rank), \(r.steps) SGD steps; SVD optimum ‖M − BA‖² = \(String(format: "%.4f", r.svdOptimum)) (‖M‖² = \(String(format: "%.1f", r.targetNorm)))")
                for run in r.runs {
                    let name = run.method.padding(toLength: 6, withPad: " ", startingAt: 0)
                    if run.diverged {
                        print("  \(name) lr \(run.lr): diverged (lower \(run.method == "op-mf" ? "--op-lr" : "--lr"))")
                    } else {
                        print("  \(name) lr \(run.lr): final \(String(format: "%.4f", run.finalError)) = \(String(format: "%.3f", run.ratioToOptimum)) x optimum")
                    }
                }
            }
        }
    }
}

/// A --device value, or a usage error (exit 64) naming it.
func parseDevice(_ text: String) throws -> DeviceChoice {
    do { return try DeviceChoice(parsing: text) } catch let e as PluginError { throw ValidationError(e.description) }
}

/// Plain mode: the one stderr line saying where --device auto put the run.
func announce(_ device: SelectedDevice, json: Bool) {
    if !json, let line = device.announcement { printError(line) }
}

/// Runs a library option check in validate(), so that its refusal is a usage error (exit 64)
/// printed with the command's usage line.
func asUsageError(_ check: () throws -> Void) throws {
    do { try check() } catch let e as TrainError { throw ValidationError(e.description) }
}
