import OpConvertCore
import OpConvertTensors

/// How an adapter's module and tensor names find the base's tensors: a per-format strategy,
/// since formats spell names their own way (PEFT's dotted paths, kohya's underscores, MLX's
/// paths, GGUF's `blk.N.attn_q`).
public protocol ModuleNaming: Sendable {
    /// A resolver for one base, given all its tensor names (built once per merge).
    func resolver(baseNames: [String]) -> any ModuleNameResolver
}

public protocol ModuleNameResolver {
    /// The base tensor for `name`: a module's weight (`<module>.weight`), its bias
    /// (`<module>.bias`), or a full tensor name (replacements, deltas).
    func resolve(_ name: String) -> ModuleResolution
}

public enum ModuleResolution: Equatable, Sendable {
    case found(String)
    case none
    case ambiguous([String])
}

/// Names that are base tensor names up to a leading prefix: PEFT, MLX and OP checkpoints.
public struct SuffixModuleNaming: ModuleNaming {
    public init() {}

    public func resolver(baseNames: [String]) -> any ModuleNameResolver { ModuleResolver(names: baseNames) }
}

/// Finds the base tensor an adapter module refers to. Adapters and bases often disagree on
/// a leading prefix (`model.` when one side was saved from the bare model, `unet.` in
/// diffusers), so besides the exact name a unique match on whole dotted components at
/// either end is accepted; anything else is an error naming the module.
struct ModuleResolver: ModuleNameResolver {
    let names: [String]
    private let exact: Set<String>

    init(names: [String]) {
        self.names = names
        exact = Set(names)
    }

    typealias Resolution = ModuleResolution

    func resolve(_ wanted: String) -> Resolution {
        if exact.contains(wanted) { return .found(wanted) }
        let candidates = names.filter { $0.hasSuffix("." + wanted) || wanted.hasSuffix("." + $0) }
        switch candidates.count {
        case 0: return .none
        case 1: return .found(candidates[0])
        default: return .ambiguous(candidates)
        }
    }
}

/// Names the format maps to base names by a table built from the base's own names
/// (forward: base name -> the adapter's spelling), for formats whose names cannot be
/// parsed back (kohya's underscores) or follow another scheme (GGUF's `blk.N`).
public struct TableModuleNaming: ModuleNaming {
    /// The adapter's spelling of a base tensor name, or nil when the format has none.
    public let spelling: @Sendable (String) -> String?

    public init(spelling: @escaping @Sendable (String) -> String?) { self.spelling = spelling }

    public func resolver(baseNames: [String]) -> any ModuleNameResolver {
        var table: [String: [String]] = [:]
        for name in baseNames {
            if let s = spelling(name) { table[s, default: []].append(name) }
        }
        return TableResolver(table: table)
    }

    struct TableResolver: ModuleNameResolver {
        let table: [String: [String]]
        func resolve(_ name: String) -> ModuleResolution {
            guard let hits = table[name] else { return .none }
            return hits.count == 1 ? .found(hits[0]) : .ambiguous(hits)
        }
    }
}
