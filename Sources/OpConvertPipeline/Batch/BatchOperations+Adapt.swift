import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

// extract, resize and combine as batch ops: the same option names as their command lines
// (`rank` or `energy`, `exact`, `target_modules`, `oversample`, `power_iterations`, `seed`,
// `adapters`, `weight`, `method`, `overwrite`).

extension BatchArgs {
    /// `rank` (a whole number >= 1) or `energy` (a fraction), exactly one of them, unless optional.
    mutating func rankTarget(required: Bool) throws -> RankTarget? {
        let rank = try double("rank"), energy = try double("energy")
        switch (rank, energy) {
        case (nil, nil):
            if required { throw error("give \"rank\" or \"energy\"") }
            return nil
        case let (r?, nil):
            guard r >= 1, r == r.rounded(), r < Double(Int32.max) else { throw error("\"rank\" is a whole number of at least 1, not \(r)") }
            return .rank(Int(r))
        case let (nil, e?):
            guard e > 0, e <= 1 else { throw error("\"energy\" is a fraction in (0, 1], not \(e)") }
            return .energy(e)
        default:
            throw error("give \"rank\" or \"energy\", not both")
        }
    }

    mutating func wholeNumber(_ key: String) throws -> Int? {
        guard let d = try double(key) else { return nil }
        guard d >= 0, d == d.rounded(), d < 1e15 else { throw error("\"\(key)\" is a whole number, not \(d)") }
        return Int(d)
    }

    mutating func stringList(_ key: String) throws -> [String]? {
        guard let v = raw(key) else { return nil }
        if let s = v.stringValue { return s.split(separator: ",").map(String.init) }
        guard let items = v.arrayValue, case let strings = items.compactMap(\.stringValue), strings.count == items.count else {
            throw error("\"\(key)\" is a comma-separated string or an array of strings")
        }
        return strings
    }
}

private func rankNormalized(_ t: RankTarget?) -> [(String, JSONValue)] {
    switch t {
    case let .rank(r)?: return [("rank", .int(Int64(r))), ("energy", .null)]
    case let .energy(e)?: return [("rank", .null), ("energy", .double(e))]
    case nil: return [("rank", .null), ("energy", .null)]
    }
}

extension ExtractOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        guard let target = try args.rankTarget(required: true) else { throw args.error("give \"rank\" or \"energy\"") }
        self.init(base: try args.requiredPath("base"), tuned: try args.requiredPath("tuned"), output: output, target: target,
                  exact: try args.bool("exact") ?? false, targetModules: try args.stringList("target_modules"),
                  oversample: try args.wholeNumber("oversample") ?? 10, powerIterations: try args.wholeNumber("power_iterations") ?? 2,
                  seed: UInt64(try args.wholeNumber("seed") ?? 0), overwrite: try args.bool("overwrite") ?? false)
    }
    package var batchInputs: [String] { [base, tuned] }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] {
        [("base", .string(base)), ("tuned", .string(tuned))] + rankNormalized(target)
            + [("exact", .bool(exact)), ("target_modules", targetModules.map { .array($0.map { .string($0) }) } ?? .null),
               ("oversample", .int(Int64(oversample))), ("power_iterations", .int(Int64(powerIterations))),
               ("seed", .int(Int64(truncatingIfNeeded: seed)))]
    }
    // One module's delta in f64 and its factors at a time; both models stream.
    package var batchMemoryEstimate: Int { batchStreamingBuffers + 64 << 20 }
}

extension ResizeOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        guard let target = try args.rankTarget(required: true) else { throw args.error("give \"rank\" or \"energy\"") }
        self.init(adapter: try args.requiredPath("adapter"), output: output, target: target, overwrite: try args.bool("overwrite") ?? false)
    }
    package var batchInputs: [String] { [adapter] }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] { [("adapter", .string(adapter))] + rankNormalized(target) }
    package var batchMemoryEstimate: Int { batchStreamingBuffers + 4 * batchInputBytes(adapter) }
}

extension CombineOptions: BatchOperationOptions {
    package init(batch args: inout BatchArgs, output: String) throws {
        guard let list = args.raw("adapters")?.arrayValue, !list.isEmpty,
              case let paths = list.compactMap(\.stringValue), paths.count == list.count, !paths.contains("") else {
            throw args.error("\"adapters\" is a non-empty array of paths")
        }
        var weights: [Double] = []
        if let w = args.raw("weight") {
            let values = w.arrayValue ?? [w]
            weights = values.compactMap { $0.doubleValue }.filter(\.isFinite)
            guard weights.count == values.count, weights.count == paths.count else {
                throw args.error("\"weight\" is one finite number per adapter (\(paths.count))")
            }
        }
        let methodName = try args.string("method") ?? CombineMethod.cat.rawValue
        guard let method = CombineMethod(rawValue: methodName) else {
            throw args.error("\"method\" is one of \(CombineMethod.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(methodName.displayEscaped)\"")
        }
        self.init(adapters: paths.map { args.resolvePath($0) }, weights: weights, output: output, method: method,
                  target: try args.rankTarget(required: method == .svd), overwrite: try args.bool("overwrite") ?? false)
    }
    package var batchInputs: [String] { adapters }
    package var batchOverwrite: Bool { overwrite }
    package var batchNormalized: [(String, JSONValue)] {
        [("adapters", .array(adapters.map { .string($0) })), ("weight", .array(weights.map { .double($0) })),
         ("method", .string(method.rawValue))] + rankNormalized(target)
    }
    package var batchMemoryEstimate: Int { batchStreamingBuffers + adapters.reduce(0) { $0 + 4 * batchInputBytes($1) } }
}
