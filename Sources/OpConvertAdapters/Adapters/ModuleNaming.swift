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
    /// When `name` found a tensor that fuses several modules along its rows (OpenCLIP's
    /// `in_proj_weight` holds q, k and v): which equal part of the rows is this module's.
    func rowPart(_ name: String) -> RowPart?
    /// Whether the base stores this module's weight transposed ([in, out]: OpenCLIP's
    /// `text_projection`, used as x @ P), which decides square weights.
    func isTransposed(_ name: String) -> Bool
}

extension ModuleNameResolver {
    public func rowPart(_ name: String) -> RowPart? { nil }
    public func isTransposed(_ name: String) -> Bool { false }
}

/// Part `index` of `count` equal row ranges of a base tensor (rows = its first dimension).
public struct RowPart: Sendable, Hashable {
    public var index: Int
    public var count: Int

    public init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    /// The rows of a tensor with `rows` rows, or nil when they do not split evenly.
    public func range(rows: Int) -> Range<Int>? {
        guard count > 0, index >= 0, index < count, rows % count == 0 else { return nil }
        let n = rows / count
        return index * n ..< (index + 1) * n
    }
}

/// Where one spelling of an adapter name lands in the base: a whole tensor, or part of its rows.
public struct ModuleTarget: Sendable, Hashable {
    public var tensor: String
    public var part: RowPart?
    /// The tensor holds the module's weight as [in, out].
    public var transposed: Bool

    public init(tensor: String, part: RowPart? = nil, transposed: Bool = false) {
        self.tensor = tensor
        self.part = part
        self.transposed = transposed
    }
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
    /// A table built from all the base's names at once (spelling -> targets), for formats
    /// whose map needs the whole base (block numbering, fused tensors, aliases).
    private let table: (@Sendable ([String]) -> [String: [ModuleTarget]])?

    public init(spelling: @escaping @Sendable (String) -> String?) {
        self.spelling = spelling
        table = nil
    }

    /// Several spellings may name one target (aliases); a spelling naming two different
    /// targets is ambiguous.
    public init(table: @escaping @Sendable ([String]) -> [String: [ModuleTarget]]) {
        spelling = { _ in nil }
        self.table = table
    }

    public func resolver(baseNames: [String]) -> any ModuleNameResolver {
        if let table { return TableResolver(table: table(baseNames)) }
        var table: [String: [ModuleTarget]] = [:]
        for name in baseNames {
            if let s = spelling(name) { table[s, default: []].append(ModuleTarget(tensor: name)) }
        }
        return TableResolver(table: table)
    }

    struct TableResolver: ModuleNameResolver {
        let table: [String: [ModuleTarget]]
        func resolve(_ name: String) -> ModuleResolution {
            guard let hits = table[name].map(Self.distinct), !hits.isEmpty else { return .none }
            return hits.count == 1 ? .found(hits[0].tensor) : .ambiguous(hits.map(\.tensor))
        }

        func rowPart(_ name: String) -> RowPart? {
            guard let hits = table[name].map(Self.distinct), hits.count == 1 else { return nil }
            return hits[0].part
        }

        func isTransposed(_ name: String) -> Bool {
            guard let hits = table[name].map(Self.distinct), hits.count == 1 else { return false }
            return hits[0].transposed
        }

        static func distinct(_ targets: [ModuleTarget]) -> [ModuleTarget] {
            var seen = Set<ModuleTarget>()
            return targets.filter { seen.insert($0).inserted }
        }
    }
}
