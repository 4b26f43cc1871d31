import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// Where peer tools' ways of naming inputs lead (README "Peer conventions"): a Hugging Face
/// hub id resolved in the local cache, an ADAPTER:WEIGHT argument, and the base model an
/// adapter names in its config.
public enum ModelSources {
    /// The hub cache directories looked in, in order: $HF_HUB_CACHE, $HF_HOME/hub,
    /// ~/.cache/huggingface/hub (each once, only those set).
    public static func hubCacheDirectories(environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var dirs: [String] = []
        if let c = environment["HF_HUB_CACHE"], !c.isEmpty { dirs.append(c) }
        if let h = environment["HF_HOME"], !h.isEmpty { dirs.append(FileSystem.join(h, "hub")) }
        if let home = environment["HOME"], !home.isEmpty { dirs.append(FileSystem.join(home, ".cache/huggingface/hub")) }
        var seen = Set<String>()
        return dirs.filter { seen.insert($0).inserted }
    }

    /// "org/name" (one slash, no leading "." or "/", no empty part): how the hub names a repository.
    public static func isHubID(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else { return false }
        return !text.hasPrefix(".") && !text.hasPrefix("~")
    }

    /// The snapshot directory of hub id `id` in the first cache that holds it: the revision
    /// refs/main names when that snapshot exists, else the most recently modified snapshot.
    public static func hubSnapshot(_ id: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        let folder = "models--" + id.replacingOccurrences(of: "/", with: "--")
        for cache in hubCacheDirectories(environment: environment) {
            let repo = FileSystem.join(cache, folder)
            let snapshots = FileSystem.join(repo, "snapshots")
            guard FileSystem.isDirectory(snapshots) else { continue }
            if let ref = try? FileSystem.readAll(FileSystem.join(repo, "refs/main")) {
                let rev = String(decoding: ref, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                let dir = FileSystem.join(snapshots, rev)
                if !rev.isEmpty, !rev.contains("/"), FileSystem.isDirectory(dir) { return dir }
            }
            let revisions = ((try? FileSystem.list(snapshots)) ?? []).map { FileSystem.join(snapshots, $0) }.filter(FileSystem.isDirectory)
            // Newest first; the name breaks ties so the choice never depends on listing order.
            let newest = revisions.max { a, b in
                let (ta, tb) = (modificationTime(a), modificationTime(b))
                return ta != tb ? ta < tb : a < b
            }
            if let newest { return newest }
        }
        return nil
    }

    private static func modificationTime(_ path: String) -> Double {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
    }

    /// A base model argument: a local path as given; else a hub id found in the local
    /// cache; else an error (66) naming the places looked.
    public static func resolveBase(_ base: String) throws -> String {
        if FileSystem.exists(base) || !isHubID(base) { return base }
        if let snapshot = hubSnapshot(base) { return snapshot }
        throw ModelSourceError.hubModelNotCached(id: base, looked: hubCacheDirectories().map {
            FileSystem.join($0, "models--" + base.replacingOccurrences(of: "/", with: "--"))
        })
    }

    /// The base model an adapter's config names (PEFT's adapter_config.json, an OP
    /// checkpoint's peft_config), or nil when it names none.
    public static func namedBase(ofAdapter path: String) -> String? {
        for (file, nested) in [("adapter_config.json", false), ("op_config.json", true)] {
            let config = FileSystem.join(path, file)
            guard FileSystem.isRegularFile(config), let bytes = try? FileSystem.readAll(config),
                  let json = try? JSONParser.parse(bytes) else { continue }
            let holder = nested ? json["peft_config"] : json
            if let name = holder?["base_model_name_or_path"]?.stringValue, !name.isEmpty { return name }
        }
        return nil
    }

    /// The base an omitted BASE stands for: what the adapter's config names, as a local
    /// directory (against the current directory, then the adapter's own) or a cached hub
    /// model; nil with what was tried when none of these exists.
    public static func inferredBase(forAdapter path: String) -> (base: String?, tried: String) {
        guard let name = namedBase(ofAdapter: path) else {
            return (nil, "\(path) names no base_model_name_or_path")
        }
        var tried: [String] = []
        for candidate in name.hasPrefix("/") ? [name] : [name, FileSystem.join(path, name)] {
            if FileSystem.isDirectory(candidate) || FileSystem.isRegularFile(candidate) { return (candidate, "") }
            tried.append(FileSystem.absolute(candidate))
        }
        if isHubID(name) {
            if let snapshot = hubSnapshot(name) { return (snapshot, "") }
            tried += hubCacheDirectories().map { FileSystem.join($0, "models--" + name.replacingOccurrences(of: "/", with: "--")) }
        }
        return (nil, "\(path) names base_model_name_or_path \"\(name)\"; looked in \(tried.joined(separator: ", "))")
    }

    /// An adapter argument with llama.cpp's --lora-scaled suffix: "PATH:WEIGHT" gives PATH
    /// and WEIGHT when the whole argument names nothing, PATH exists and WEIGHT is a finite
    /// number; otherwise (a real path containing ':' included) the argument as given.
    public static func splitAdapterWeight(_ argument: String) -> (path: String, weight: Double?) {
        if FileSystem.exists(argument) { return (argument, nil) }
        guard let colon = argument.lastIndex(of: ":") else { return (argument, nil) }
        let path = String(argument[..<colon]), suffix = String(argument[argument.index(after: colon)...])
        guard !path.isEmpty, let w = Double(suffix), w.isFinite, FileSystem.exists(path) else { return (argument, nil) }
        return (path, w)
    }
}

extension ModelSources {
    /// merge's positional arguments and weights resolved: BASE (a path, a cached hub id, or
    /// omitted when the first argument is an adapter: then the adapter's named base), and
    /// each adapter with its weight (ADAPTER:WEIGHT, or --weight/--ratios in order, else 1).
    public static func mergeInputs(_ arguments: [String], weights: [Double]) throws -> (base: String, adapters: [(path: String, weight: Double)]) {
        guard let first = arguments.first else { throw ModelSourceError.usage("give BASE and at least one adapter") }
        let baseOmitted = AdapterRegistry.format(of: splitAdapterWeight(first).path) != nil
        let adapterArguments = baseOmitted ? arguments : Array(arguments.dropFirst())
        if adapterArguments.isEmpty { throw ModelSourceError.usage("give at least one adapter after BASE") }
        let split = adapterArguments.map(splitAdapterWeight)
        let suffixed = split.filter { $0.weight != nil }.count
        if suffixed > 0 && !weights.isEmpty {
            throw ModelSourceError.usage("weights given both as ADAPTER:WEIGHT and with --weight/--ratios; use one way")
        }
        if !weights.isEmpty && weights.count != split.count {
            throw ModelSourceError.usage("\(weights.count) weight\(weights.count == 1 ? "" : "s") given (--weight/--ratios) for \(split.count) adapter\(split.count == 1 ? "" : "s"); give one per adapter, in order, or none")
        }
        let adapters = split.enumerated().map { i, a in (path: a.path, weight: weights.isEmpty ? (a.weight ?? 1) : weights[i]) }
        if !baseOmitted { return (try resolveBase(first), adapters) }
        let (base, tried) = inferredBase(forAdapter: adapters[0].path)
        // With more arguments the first may be a mistaken BASE: the base check says what it is.
        if base == nil && arguments.count > 1 { return (first, Array(adapters.dropFirst())) }
        guard let base else { throw ModelSourceError.usage("BASE omitted (\(first) is an adapter) and its base model is not here: \(tried); give BASE") }
        return (base, adapters)
    }
}

public enum ModelSourceError: CategorizedError, Sendable {
    case hubModelNotCached(id: String, looked: [String])
    case usage(String)

    public var category: ErrorCategory {
        switch self {
        case .hubModelNotCached: return .missingInput
        case .usage: return .usage
        }
    }
    public var description: String {
        switch self {
        case let .usage(message): return message
        case let .hubModelNotCached(id, looked):
            let places = looked.isEmpty ? "no hub cache is set (HF_HUB_CACHE, HF_HOME, HOME)" : "looked in " + looked.joined(separator: ", ")
            return "\(id): no such file or directory, and no local Hugging Face cache snapshot of it (\(places)); download it first (huggingface-cli download \(id))"
        }
    }
}
