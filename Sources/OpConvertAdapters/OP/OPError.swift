import OpConvertCore
import OpConvertTensors

/// Problems with an OP checkpoint, naming the checkpoint and the module.
public enum OPError: CategorizedError, Sendable {
    case invalidConfig(path: String, reason: String)
    case unsupportedVersion(path: String, version: String)
    case unknownActivation(path: String, activation: String)
    case missingTensor(path: String, module: String, tensor: String)
    case badShape(path: String, module: String, reason: String)
    case unknownShape(path: String, module: String)
    case nonFinite(path: String, module: String, what: String)
    case unrecognizedNames(path: String, sample: [String])
    case invalidKeyMap(path: String, reason: String)

    public var category: ErrorCategory {
        switch self {
        case .unsupportedVersion, .unknownActivation: return .unsupported
        case .unknownShape: return .usage
        default: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .invalidConfig(p, r): return "\(p): invalid op_config.json: \(r)"
        case let .unsupportedVersion(p, v): return "\(p): OP checkpoint format_version \(v) is not supported (this opconvert reads version 1)"
        case let .unknownActivation(p, a): return "\(p): unknown activation \"\(a)\" in op_config.json (supported: relu)"
        case let .missingTensor(p, m, t): return "\(p): module \(m): missing tensor \(t)"
        case let .badShape(p, m, r): return "\(p): module \(m): \(r)"
        case let .unknownShape(p, m):
            return "\(p): module \(m): its input/output features cannot be told apart from the checkpoint alone (fc2 holds r*(in+out) values); pass --base MODEL so they are read from the base weights"
        case let .nonFinite(p, m, w): return "\(p): module \(m): materialized \(w) contains NaN or Inf"
        case let .unrecognizedNames(p, sample):
            return "\(p): no tensor follows the OP checkpoint v1 names (<module>.op_mlp.z, .op_mlp.fc1.weight, ...); found e.g. \(sample.joined(separator: ", ")). If another trainer saved it, map its names with --key-map FILE"
        case let .invalidKeyMap(p, r): return "\(p): invalid key map: \(r)"
        }
    }
}
