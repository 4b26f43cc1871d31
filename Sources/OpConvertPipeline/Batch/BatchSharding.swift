import OpConvertCore

/// Which part of a manifest this process runs: shard `index` of `count` (0-based) takes the
/// jobs at positions index, index + count, index + 2·count, ... (positions count jobs, not
/// lines, from 0). Every job belongs to exactly one shard of a given count.
public struct BatchShard: Sendable, Equatable, CustomStringConvertible {
    public var index: Int
    public var count: Int
    /// Where it came from: "--shard", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX".
    public var source: String

    public init(index: Int, count: Int, source: String = "--shard") {
        self.index = index
        self.count = count
        self.source = source
    }

    public func selects(position: Int) -> Bool { position % count == index }

    public var description: String { "\(index)/\(count)" }

    public static func == (a: BatchShard, b: BatchShard) -> Bool { a.index == b.index && a.count == b.count }
}

public struct BatchShardError: CategorizedError, Sendable {
    public var message: String
    public var description: String { message }
    public var category: ErrorCategory { .usage }
}

/// How a shard is chosen, first match wins:
/// 1. `--shard I/N`: 0-based I in 0..<N (as Kubernetes' JOB_COMPLETION_INDEX counts, and
///    as a Slurm array written `--array=0-(N-1)`).
/// 2. Slurm job arrays: `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`; the shard is
///    (ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, so `--array=1-N` and
///    `--array=0-(N-1)` both work (MIN 0 and STEP 1 when unset). Arrays with a `%` limit are
///    fine; arrays with holes (`--array=1,4,9`) are refused when an ID does not fit.
/// 3. Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` (0-based) with the count from
///    `--shard-count` or `OPCONVERT_SHARD_COUNT` (set it to the Job's `completions`).
/// 4. Otherwise the whole manifest.
public enum BatchSharding {
    public static func parse(_ text: String) throws(BatchShardError) -> BatchShard {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]) else {
            throw BatchShardError(message: "--shard is I/N (0-based shard I of N, e.g. 0/4), not \"\(text.displayEscaped)\"")
        }
        return try make(index: i, count: n, source: "--shard")
    }

    static func make(index: Int, count: Int, source: String) throws(BatchShardError) -> BatchShard {
        guard count >= 1 else { throw BatchShardError(message: "\(source): the shard count must be at least 1, not \(count)") }
        guard (0..<count).contains(index) else {
            throw BatchShardError(message: "\(source): shard \(index) is outside 0..\(count - 1) (shards count from 0)")
        }
        return BatchShard(index: index, count: count, source: source)
    }

    /// The shard this process runs, or nil for all jobs.
    public static func resolve(flag: BatchShard?, shardCount: Int?, environment: [String: String]) throws(BatchShardError) -> BatchShard? {
        if let flag {
            if shardCount != nil { throw BatchShardError(message: "--shard-count goes with JOB_COMPLETION_INDEX; --shard already gives the count") }
            return flag
        }
        func integer(_ name: String) throws(BatchShardError) -> Int? {
            guard let raw = environment[name], !raw.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
            guard let v = Int(raw.trimmingCharacters(in: .whitespaces)) else {
                throw BatchShardError(message: "\(name)=\(raw.displayEscaped) is not an integer")
            }
            return v
        }
        if let id = try integer("SLURM_ARRAY_TASK_ID") {
            guard let count = try integer("SLURM_ARRAY_TASK_COUNT") else {
                throw BatchShardError(message: "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
            }
            let minimum = try integer("SLURM_ARRAY_TASK_MIN") ?? 0
            let step = try integer("SLURM_ARRAY_TASK_STEP") ?? 1
            guard step >= 1, id >= minimum, (id - minimum) % step == 0 else {
                throw BatchShardError(message: "SLURM_ARRAY_TASK_ID=\(id) is not on the array MIN + k·STEP (MIN \(minimum), STEP \(step)); use a contiguous --array or pass --shard I/N")
            }
            return try make(index: (id - minimum) / step, count: count, source: "SLURM_ARRAY_TASK_ID")
        }
        if let index = try integer("JOB_COMPLETION_INDEX") {
            let envCount = try integer("OPCONVERT_SHARD_COUNT")
            guard let count = shardCount ?? envCount else {
                throw BatchShardError(message: "JOB_COMPLETION_INDEX is set but the shard count is not: pass --shard-count N or set OPCONVERT_SHARD_COUNT to the Job's completions")
            }
            return try make(index: index, count: count, source: "JOB_COMPLETION_INDEX")
        }
        if shardCount != nil { throw BatchShardError(message: "--shard-count needs JOB_COMPLETION_INDEX in the environment (or use --shard I/N)") }
        return nil
    }

    /// Positions (0-based, in manifest order) of the jobs a shard runs out of `total`.
    public static func positions(of shard: BatchShard?, total: Int) -> [Int] {
        guard let shard else { return Array(0..<total) }
        return Array(stride(from: shard.index, to: total, by: shard.count))
    }
}
