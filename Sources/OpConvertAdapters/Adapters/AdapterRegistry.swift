import OpConvertCore
import OpConvertTensors

/// Every adapter format opconvert reads, in probe order: the first format whose `probe`
/// says yes opens the path. More specific probes come first (VeRA and MLX directories also
/// hold an adapter_config.json; PEFT takes every other one, so that a PEFT type opconvert
/// cannot merge gets a message saying so instead of "not an adapter").
public enum AdapterRegistry {
    public static let formats: [any AdapterFormat.Type] = [
        DiffusersLoraFormat.self,
        OPCheckpointFormat.self,
        VeRAFormat.self,
        MLXFormat.self,
        GGUFFormat.self,
        KohyaFormat.self,
        PEFTFormat.self,
    ]

    /// The format of `path`, or nil when no format recognises it.
    public static func format(of path: String) -> (any AdapterFormat.Type)? {
        formats.first { $0.probe(path) }
    }

    public static func format(_ id: AdapterFormatID) -> (any AdapterFormat.Type)? {
        formats.first { $0.id == id }
    }

    /// The writer for `id`, or an unsupported-error `refusal: opconvert writes peft, mlx, ...`.
    public static func writer(_ id: AdapterFormatID, refusal: String) throws -> any AdapterFormat.Type {
        guard let format = format(id), format.canWrite else {
            throw PipelineError.unsupported("\(refusal): opconvert writes \(writable.map(\.rawValue).joined(separator: ", ")) adapters")
        }
        return format
    }

    /// The formats `convert --to` can write.
    public static var writable: [AdapterFormatID] { formats.filter { $0.canWrite }.map { $0.id } }

    /// Opens any adapter; a path no format recognises gets the input check's message (what
    /// the path is, and what was expected).
    public static func open(_ path: String, options: AdapterOpenOptions = AdapterOpenOptions()) throws -> Adapter {
        guard let format = format(of: path) else {
            try InputCheck.requireAdapterDirectory(path)
            throw AdapterError.missingConfig(path: path)
        }
        return try format.open(path, options: options)
    }

    /// "a PEFT adapter directory (...), an OP checkpoint directory (...) or ...".
    public static var expectedPhrase: String {
        // PEFT and OP checkpoints first: what most users hold.
        let first: [AdapterFormatID] = [.peft, .op]
        let ordered = formats.filter { first.contains($0.id) }.sorted { first.firstIndex(of: $0.id)! < first.firstIndex(of: $1.id)! }
            + formats.filter { !first.contains($0.id) }
        let phrases = ordered.map { $0.expected }
        guard phrases.count > 1 else { return phrases.first ?? "" }
        return phrases.dropLast().joined(separator: ", ") + " or " + phrases.last!
    }
}
