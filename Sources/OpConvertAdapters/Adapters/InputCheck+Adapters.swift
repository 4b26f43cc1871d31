import OpConvertCore
import OpConvertTensors

/// The adapter and OP checkpoint parts of InputCheck (they know these formats' file names).
extension InputCheck {
    /// Every format the registry reads, PEFT and OP checkpoints first.
    public static var adapterExpected: String { AdapterRegistry.expectedPhrase }
    public static let opCheckpointExpected = "an OP checkpoint directory (op_config.json + op_model.safetensors[.zst])"
    public static let keyMapExpected = "a key map JSON file (an array of {\"pattern\", \"replacement\"} rules)"

    /// An adapter path for `merge`: a PEFT adapter or OP checkpoint directory.
    package static func requireAdapterDirectory(_ path: String) throws {
        let kind = InputKind.of(path)
        switch kind {
        case .missing: throw InputError.notFound(path: path, expected: adapterExpected)
        case .peftAdapter, .opCheckpoint: return
        case .file:
            throw InputError.wrongKind(path: path, problem: "\(kind.phrase) where an adapter directory is needed\(containerHint(path)) (expected \(adapterExpected))")
        case .model:
            throw InputError.wrongKind(path: path, problem: "a model directory, not an adapter (no adapter_config.json or op_config.json; expected \(adapterExpected))")
        default:
            throw InputError.wrongKind(path: path, problem: "\(kind.phrase), expected \(adapterExpected)")
        }
    }

    /// An OP checkpoint path for `materialize`.
    package static func requireOPCheckpoint(_ path: String) throws {
        let kind = InputKind.of(path)
        switch kind {
        case .missing: throw InputError.notFound(path: path, expected: opCheckpointExpected)
        case .opCheckpoint: return
        case .peftAdapter:
            throw InputError.wrongKind(path: path, problem: "a PEFT adapter, not an OP checkpoint (it needs no materializing: merge it or load it with PEFT as it is)")
        case .file:
            throw InputError.wrongKind(path: path, problem: "\(kind.phrase) where an OP checkpoint directory is needed\(containerHint(path)) (expected \(opCheckpointExpected))")
        case .model:
            throw InputError.wrongKind(path: path, problem: "a model directory, not an OP checkpoint (no op_config.json; expected \(opCheckpointExpected))")
        default:
            throw InputError.wrongKind(path: path, problem: "\(kind.phrase), expected \(opCheckpointExpected)")
        }
    }

    /// "; name its directory" when a file inside an adapter/checkpoint was named.
    static func containerHint(_ path: String) -> String {
        let name = FileSystem.split(path).name
        let inner = ["adapter_config.json", "adapter_model.safetensors", OPConfig.fileName, OPCheckpoint.weightsName, OPCheckpoint.weightsName + ".zst"]
        return inner.contains(name) ? "; name the directory that holds \(name)" : ""
    }
}
