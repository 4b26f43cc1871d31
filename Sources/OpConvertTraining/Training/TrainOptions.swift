import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Which adapter `train` fits.
public enum AdapterMethod: String, CaseIterable, Sendable, Codable {
    case lora
    case dora
    case opLora = "op-lora"
    case opDora = "op-dora"

    public var usesHypernetwork: Bool { self == .opLora || self == .opDora }
    public var usesMagnitude: Bool { self == .dora || self == .opDora }
}

/// Learning-rate schedules, as transformers' get_*_schedule_with_warmup: a linear warmup
/// from 0, then constant, linear decay to 0, or a half cosine to 0.
public enum LRSchedule: String, CaseIterable, Sendable, Codable {
    case constant, linear, cosine

    /// The multiplier for 0-based `step` of `total` steps.
    public func factor(step: Int, total: Int, warmup: Int) -> Double {
        if step < warmup { return Double(step) / Double(max(1, warmup)) }
        switch self {
        case .constant: return 1
        case .linear: return max(0, Double(total - step) / Double(max(1, total - warmup)))
        case .cosine:
            let progress = Double(step - warmup) / Double(max(1, total - warmup))
            return max(0, 0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}

public struct TrainOptions: Sendable {
    public var base: String
    public var data: String
    /// Adapter (lora/dora) or OP checkpoint (op-*) directory; nil: train and report only.
    public var output: String?
    public var method: AdapterMethod = .opLora
    /// Layers to adapt (names as in the base: `<name>.weight`); nil = every layer.
    public var layers: [String]?
    public var rank = 4
    public var alpha: Double = 8
    public var mlpHidden = 32
    public var zDim = 32
    public var lr: Double = 1e-3
    public var weightDecay: Double = 0
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var schedule: LRSchedule = .constant
    public var warmupSteps = 0
    public var batchSize = 64
    public var epochs = 1
    public var seed: UInt64 = 0
    public var lossCSV: String?
    public var plugin: String?
    /// Where the compute runs (--device): with `plugin` set, the device index in it.
    public var device: DeviceChoice = .auto
    /// Let GEMMs use TF32 (CUDA only; no effect on the CPU).
    public var allowTF32 = false
    public var threads = 0
    public var overwrite = false
    public var showProgress: Bool?
    /// The run stops (TrainError.diverged, nothing saved) when a step's loss exceeds this
    /// factor times the reference loss: the first step's loss, or ln(classes) (a uniform
    /// guess) when that is larger, so a base that already fits its data is not stopped by
    /// noise. `.infinity` leaves only the non-finite-loss check.
    public var maxLossGrowth: Double = TrainOptions.defaultMaxLossGrowth
    public static let defaultMaxLossGrowth: Double = 1000

    public init(base: String, data: String) {
        self.base = base
        self.data = data
    }

    /// Checks the values that need no file (the CLI calls this in validate() for exit 64).
    public func validate() throws {
        for (value, flag) in [(rank, "--rank"), (batchSize, "--batch-size"), (epochs, "--epochs"), (mlpHidden, "--mlp-hidden"), (zDim, "--z-dim")] {
            try TrainingLimits.requirePositive(value, flag)
        }
        guard warmupSteps >= 0 else { throw TrainError.invalidOption("--warmup-steps must be 0 or more, not \(warmupSteps)") }
        guard threads >= 0 else { throw TrainError.invalidOption("--threads must be 0 (the plugin's default) or more, not \(threads)") }
        try TrainingLimits.requirePositiveRate(lr, "--lr")
        guard alpha.isFinite, alpha > 0 else { throw TrainError.invalidOption("--alpha must be a positive number, not \(alpha)") }
        guard weightDecay.isFinite, weightDecay >= 0, Float(weightDecay).isFinite else {
            throw TrainError.invalidOption("--weight-decay must be a finite number >= 0, not \(weightDecay)")
        }
        for (beta, name) in [(beta1, "beta1"), (beta2, "beta2")] where !(beta >= 0 && beta < 1) {
            throw TrainError.invalidOption("AdamW \(name) must be in [0, 1), not \(beta)")
        }
        guard eps.isFinite, eps > 0, Float(eps) > 0 else { throw TrainError.invalidOption("AdamW eps must be a positive f32 number, not \(eps)") }
        guard maxLossGrowth > 1 else {
            throw TrainError.invalidOption("--max-loss-growth must be a number > 1 (inf: stop only on a non-finite loss), not \(maxLossGrowth)")
        }
        if let layers {
            guard !layers.isEmpty, !layers.contains(where: \.isEmpty) else { throw TrainError.invalidOption("--layers has an empty layer name") }
        }
    }
}

/// Size limits shared by `train` and `train factorize`.
public enum TrainingLimits {
    /// Elements of one tensor or work buffer: the kernel ABI and LAPACK take 32-bit sizes.
    public static let maxElements = Int(Int32.max)

    /// The product of `factors`, refused (naming `what`) when it overflows or exceeds `maxElements`.
    public static func elements(_ factors: [Int], _ what: String) throws -> Int {
        var n = 1
        for f in factors {
            let (p, overflow) = n.multipliedReportingOverflow(by: f)
            guard f >= 0, !overflow, p <= maxElements else {
                throw TrainError.invalidOption("\(what): \(factors.map(String.init).joined(separator: " x ")) elements exceed the limit of \(maxElements) per tensor")
            }
            n = p
        }
        return n
    }

    static func requirePositive(_ value: Int, _ flag: String) throws {
        guard value > 0 else { throw TrainError.invalidOption("\(flag) must be a positive integer, not \(value)") }
    }

    /// A learning rate: positive and finite also in f32 (the kernels take f32).
    static func requirePositiveRate(_ value: Double, _ flag: String) throws {
        guard value > 0, value.isFinite, Float(value).isFinite, Float(value) > 0 else {
            throw TrainError.invalidOption("\(flag) must be a positive finite number, not \(value)")
        }
    }
}

public struct TrainSummary: Codable, Sendable {
    public var method: AdapterMethod
    public var plugin: String
    /// Where it ran: "cpu", "cuda:0 (NVIDIA H200)", ...
    public var device: String
    public var steps: Int
    public var epochs: Int
    public var lr: Double
    public var firstLoss: Double
    /// Mean training loss over the last epoch.
    public var finalLoss: Double
    public var finalAccuracy: Double
    public var trainParameters: Int
    public var inferenceParameters: Int
    public var seconds: Double
    public var secondsPerEpoch: Double
    public var output: String?
    public var lossCsv: String?
}

/// Problems specific to training inputs.
public enum TrainError: CategorizedError, Sendable {
    case invalidBase(path: String, reason: String)
    case invalidData(path: String, reason: String)
    case invalidOption(String)
    /// The loss at 0-based `step` is non-finite (`limit` nil) or above `limit`
    /// (--max-loss-growth x the reference loss).
    case diverged(step: Int, loss: Double, limit: Double?)
    /// A parameter is non-finite after the last update (the loss was finite until then).
    case nonFiniteParameter(step: Int, name: String)

    public var category: ErrorCategory {
        switch self {
        case .invalidOption: return .usage
        // The data and settings give no finite fit: an inconsistent input, not a bug.
        case .diverged, .nonFiniteParameter: return .malformedInput
        default: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .invalidBase(p, r): return "\(p): not a usable base network: \(r)"
        case let .invalidData(p, r): return "\(p): not a usable dataset: \(r)"
        case let .invalidOption(m): return m
        case let .diverged(s, l, nil):
            return "training diverged at step \(s): the loss is \(l); lower --lr (nothing was saved)"
        case let .diverged(s, l, limit?):
            return "training diverged at step \(s): the loss \(l) exceeds \(limit) (--max-loss-growth x the first step's loss or ln(classes)); lower --lr or raise --max-loss-growth (nothing was saved)"
        case let .nonFiniteParameter(s, name):
            return "training diverged: \(name) is not finite after step \(s); lower --lr (nothing was saved)"
        }
    }
}

import Foundation
