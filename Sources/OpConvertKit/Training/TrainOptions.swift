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
    public var threads = 0
    public var overwrite = false
    public var showProgress: Bool?

    public init(base: String, data: String) {
        self.base = base
        self.data = data
    }
}

public struct TrainSummary: Codable, Sendable {
    public var method: AdapterMethod
    public var plugin: String
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
public enum TrainError: ClassifiedError, Sendable {
    case invalidBase(path: String, reason: String)
    case invalidData(path: String, reason: String)
    case invalidOption(String)
    case diverged(step: Int, loss: Double)

    public var exitStatus: ExitStatus {
        switch self {
        case .invalidOption: return .usage
        case .diverged: return .failure
        default: return .dataError
        }
    }

    public var description: String {
        switch self {
        case let .invalidBase(p, r): return "\(p): not a usable base network: \(r)"
        case let .invalidData(p, r): return "\(p): not a usable dataset: \(r)"
        case let .invalidOption(m): return m
        case let .diverged(s, l): return "training diverged at step \(s) (loss \(l)); lower --lr"
        }
    }
}

import Foundation
