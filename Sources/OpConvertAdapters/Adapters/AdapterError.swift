import OpConvertCore
import OpConvertTensors

/// Problems with an adapter (PEFT directory or OP checkpoint) or with applying it to a base.
public enum AdapterError: CategorizedError, Sendable {
    case missingConfig(path: String)
    case invalidConfig(path: String, reason: String)
    case pickleWeights(path: String)
    case unsupported(path: String, reason: String)
    /// The output format cannot represent this adapter.
    case cannotWrite(path: String, reason: String)
    case invalidTensors(path: String, module: String, reason: String)
    case unmatchedModules(adapter: String, modules: [String], hint: String)
    case ambiguousModule(adapter: String, module: String, candidates: [String])
    case shapeMismatch(adapter: String, module: String, reason: String)
    case nonFinite(module: String, tensor: String)
    case zeroNorm(module: String, row: Int)

    public var category: ErrorCategory {
        switch self {
        case .unsupported, .pickleWeights, .cannotWrite: return .unsupported
        default: return .malformedInput
        }
    }

    public var description: String {
        switch self {
        case let .missingConfig(p):
            return "\(p): not an adapter directory: no adapter_config.json (or op_config.json)"
        case let .invalidConfig(p, r):
            return "\(p): invalid adapter config: \(r)"
        case let .pickleWeights(p):
            return "\(p): adapter weights are a pickle (adapter_model.bin); opconvert reads only safetensors. Re-save the adapter with save_pretrained(safe_serialization=True)"
        case let .unsupported(p, r):
            return "\(p): cannot merge: \(r)"
        case let .cannotWrite(p, r):
            return "\(p): cannot write: \(r)"
        case let .invalidTensors(p, m, r):
            return "\(p): module \(m): \(r)"
        case let .unmatchedModules(a, ms, hint):
            let list = ms.prefix(10).joined(separator: ", ") + (ms.count > 10 ? ", ... (\(ms.count) in all)" : "")
            return "\(a): \(ms.count) adapter module\(ms.count == 1 ? "" : "s") match no base tensor: \(list)\(hint.isEmpty ? "" : ". " + hint)"
        case let .ambiguousModule(a, m, c):
            return "\(a): module \(m) matches several base tensors: \(c.joined(separator: ", "))"
        case let .shapeMismatch(a, m, r):
            return "\(a): module \(m): \(r)"
        case let .nonFinite(m, t):
            return "merge of module \(m) produced non-finite values in \(t) (refused by --safe)"
        case let .zeroNorm(m, row):
            return "DoRA merge of module \(m): weight norm is zero at index \(row) (refused by --safe)"
        }
    }
}
