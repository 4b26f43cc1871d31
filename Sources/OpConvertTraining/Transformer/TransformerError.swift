import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Problems with a transformer model directory or a token data file, each naming the file
/// and the field, tensor or row at fault.
public enum TransformerError: CategorizedError, Sendable, Equatable {
    /// config.json is malformed or inconsistent (exit 65).
    case invalidConfig(path: String, field: String, reason: String)
    /// config.json asks for something that changes the maths and is not implemented (exit 69).
    case unsupportedConfig(path: String, field: String, reason: String)
    case missingTensor(path: String, tensor: String)
    case unexpectedTensors(path: String, tensors: [String])
    case badShape(path: String, tensor: String, expected: [Int], actual: [Int])
    case badDType(path: String, tensor: String, dtype: String, expected: String)
    /// A token data file that cannot be used (exit 65).
    case invalidData(path: String, reason: String)

    public var category: ErrorCategory {
        switch self {
        case .unsupportedConfig: return .unsupported
        case .badDType: return .unsupported
        default: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .invalidConfig(p, f, r): return "\(p): \(f): \(r)"
        case let .unsupportedConfig(p, f, r): return "\(p): unsupported \(f): \(r)"
        case let .missingTensor(p, t): return "\(p): missing tensor \(t)"
        case let .unexpectedTensors(p, ts):
            let list = ts.prefix(5).joined(separator: ", ") + (ts.count > 5 ? ", ... (\(ts.count) in all)" : "")
            return "\(p): tensor\(ts.count == 1 ? "" : "s") not used by a model with this config.json: \(list)"
        case let .badShape(p, t, e, a): return "\(p): tensor \(t) has shape \(a), expected \(e) from config.json"
        case let .badDType(p, t, d, e): return "\(p): tensor \(t) has dtype \(d), expected \(e)"
        case let .invalidData(p, r): return "\(p): \(r)"
        }
    }
}
