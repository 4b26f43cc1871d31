import Foundation
import OpConvertCore
import OpConvertTensors
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct BatchOptions: Sendable {
    public var manifest: String
    /// nil: every job (see `BatchSharding.resolve` for the flags and environment).
    public var shard: BatchShard?
    /// Jobs run at once.
    public var jobs: Int
    /// Hash the inputs' contents into the fingerprint too (reads every input once per run).
    public var verifyInputs: Bool
    /// Memory the jobs together may plan for; nil: the machine's physical memory.
    public var memoryLimit: Int?

    public init(manifest: String, shard: BatchShard? = nil, jobs: Int = 1, verifyInputs: Bool = false, memoryLimit: Int? = nil) {
        self.manifest = manifest
        self.shard = shard
        self.jobs = jobs
        self.verifyInputs = verifyInputs
        self.memoryLimit = memoryLimit
    }
}

/// The outcome of one job.
public struct BatchJobResult: Sendable {
    public var line: Int
    public var op: String
    public var output: String
    /// Ran and finished, or skipped as already done.
    public var ok: Bool { error == nil }
    /// Its output existed with the same fingerprint: nothing was run.
    public var skipped: Bool
    public var error: (any Error)?
    public var seconds: Double
    public var warnings: [String]
}

public struct BatchSummary: Sendable {
    /// Jobs in the manifest, and those this shard ran.
    public var manifestJobs: Int
    public var results: [BatchJobResult]
    public var shard: BatchShard?
    public var seconds: Double
    /// The signal that stopped the run early, if any.
    public var interrupted: Int32?

    public var succeeded: Int { results.filter { $0.ok && !$0.skipped }.count }
    public var skipped: Int { results.filter(\.skipped).count }
    public var failed: Int { results.filter { !$0.ok }.count }
}

/// Why a job did not run, or a manifest cannot run at all.
public enum BatchError: CategorizedError, Sendable {
    /// The output exists with a record of other inputs or options.
    case outputChanged(output: String, line: Int, recordedLine: Int)
    /// The output exists and no batch job finished it.
    case outputWithoutRecord(output: String, line: Int)
    /// Two jobs would write the same place, or one inside the other's output.
    case sameOutput(output: String, line: Int, otherLine: Int, nested: Bool)
    /// A job reads what another job writes.
    case outputIsInput(output: String, line: Int, input: String, readerLine: Int)
    case unknownOp(op: String, line: Int)
    case memory(jobs: Int, estimate: Int, line: Int, limit: Int)
    case jobsOutOfRange(Int)
    /// Not started: an interrupt came first.
    case notStarted(signal: Int32)

    public var category: ErrorCategory {
        switch self {
        case .outputChanged, .outputWithoutRecord, .sameOutput, .outputIsInput: return .outputConflict
        case .unknownOp: return .malformedInput
        case .memory, .jobsOutOfRange: return .usage
        case .notStarted: return .internal
        }
    }

    public var description: String {
        switch self {
        case let .outputChanged(o, line, recorded):
            return "line \(line): \(o): exists from another job's inputs or options (recorded by line \(recorded) of a batch run); set \"overwrite\": true in its args to replace it"
        case let .outputWithoutRecord(o, line):
            return "line \(line): \(o): exists but no batch job finished it (no \(BatchRecord.name)); set \"overwrite\": true in its args to replace it"
        case let .sameOutput(o, line, other, nested):
            return nested ? "line \(line): \(o): output lies inside line \(other)'s output; give each job its own place"
                : "line \(line): \(o): output is also line \(other)'s output; give each job its own"
        case let .outputIsInput(o, line, input, reader):
            return "line \(line): \(o): output is (or holds) \(input), which line \(reader) reads; jobs run in any order, so split the manifest into two runs"
        case let .unknownOp(op, line):
            return "line \(line): unknown op \"\(op.displayEscaped)\" (batch runs \(BatchOperations.all.map(\.name).joined(separator: ", ")))"
        case let .memory(jobs, estimate, line, limit):
            return "--jobs \(jobs) would plan for \(jobs) × \(formatBatchBytes(estimate)) (the largest job, line \(line)), more than the \(formatBatchBytes(limit)) of memory here; lower --jobs"
        case let .jobsOutOfRange(n):
            return "--jobs must be at least 1, not \(n)"
        case let .notStarted(sig):
            return "not started: interrupted by signal \(sig)"
        }
    }
}

func formatBatchBytes(_ n: Int) -> String {
    n >= 1 << 30 ? String(format: "%.1f GiB", Double(n) / Double(1 << 30)) : String(format: "%.0f MiB", Double(n) / Double(1 << 20))
}

/// A decoded job of the manifest.
struct PlannedBatchJob: Sendable {
    var position: Int
    var line: Int
    var op: String
    var output: String
    var job: PreparedBatchJob
}

/// Runs a manifest's jobs with the same library calls as the commands.
///
/// Threads: `--jobs K` runs K jobs at once, each on its own thread. The merge and the dtype
/// conversion spread their rows over Dispatch's shared pool, which is sized to the cores and
/// shared by all jobs, so K jobs do not multiply the threads doing arithmetic: K > 1 pays
/// for small jobs whose time goes to opening files, parsing headers, fsync and rename
/// (hundreds of small adapters), while one job at a time already uses every core on a big
/// merge.
///
/// Memory: the commands stream tensors through fixed buffers (about 256 MiB a job with the
/// writer's slots); what they hold whole is the adapters (merge, widened to f32) or the OP
/// checkpoint (materialize). Each job's estimate is that; a run whose K × largest estimate
/// exceeds the machine's memory is refused before anything starts.
///
/// Every job of the manifest is decoded and checked before any runs, whatever the shard,
/// so all shards refuse the same bad manifest.
public enum BatchRunner {
    /// Decodes and checks every job: unknown ops or keys, conflicting outputs.
    static func plan(_ options: BatchOptions) throws -> [PlannedBatchJob] {
        let lines = try BatchManifest.read(options.manifest)
        let base = FileSystem.split(FileSystem.absolute(options.manifest)).directory
        var planned: [PlannedBatchJob] = []
        for (position, line) in lines.enumerated() {
            guard let op = BatchOperations.named(line.op) else { throw BatchError.unknownOp(op: line.op, line: line.line) }
            var args = try BatchArgs(job: line, manifest: options.manifest, baseDirectory: base)
            let job = try op.prepare(&args, line.output)
            planned.append(PlannedBatchJob(position: position, line: line.line, op: line.op, output: line.output, job: job))
        }
        try checkConflicts(planned)
        return planned
    }

    /// Outputs that coincide or nest, and outputs other jobs read. Paths are compared
    /// resolved (symbolic links followed as far as they exist), in time linear in the jobs.
    static func checkConflicts(_ jobs: [PlannedBatchJob]) throws {
        var outputs: [String: Int] = [:]   // resolved output -> line
        var resolvedOutputs: [(String, PlannedBatchJob)] = []
        for job in jobs {
            let r = resolved(job.output)
            if let other = outputs[r] { throw BatchError.sameOutput(output: job.output, line: job.line, otherLine: other, nested: false) }
            outputs[r] = job.line
            resolvedOutputs.append((r, job))
        }
        // Every proper ancestor of an output, with (up to two of) the lines writing below it.
        var aboveOutputs: [String: [Int]] = [:]
        for (r, job) in resolvedOutputs {
            for a in ancestors(r) {
                if let other = outputs[a] { throw BatchError.sameOutput(output: job.output, line: job.line, otherLine: other, nested: true) }
                if aboveOutputs[a, default: []].count < 2 { aboveOutputs[a, default: []].append(job.line) }
            }
        }
        for reader in jobs {
            for input in reader.job.inputs {
                let r = resolved(input)
                // The input is an output, or lies inside one.
                for candidate in [r] + ancestors(r) {
                    if let writer = outputs[candidate], writer != reader.line {
                        throw BatchError.outputIsInput(output: jobs.first { $0.line == writer }?.output ?? candidate, line: writer,
                                                       input: input, readerLine: reader.line)
                    }
                }
                // The input holds an output.
                if let writer = aboveOutputs[r]?.first(where: { $0 != reader.line }) {
                    throw BatchError.outputIsInput(output: jobs.first { $0.line == writer }?.output ?? r, line: writer,
                                                   input: input, readerLine: reader.line)
                }
            }
        }
    }

    /// `path` absolute, with its longest existing prefix resolved.
    static func resolved(_ path: String) -> String {
        var rest: [String] = []
        var p = FileSystem.absolute(path)
        while p != "/" && !FileSystem.exists(p) {
            let (dir, name) = FileSystem.split(p)
            rest.insert(name, at: 0)
            p = dir
        }
        var out = FileSystem.canonical(p) ?? p
        // What does not exist yet has no links to follow: "." and ".." are plain steps.
        for name in rest where name != "." {
            out = name == ".." ? FileSystem.split(out).directory : FileSystem.join(out, name)
        }
        return out
    }

    static func ancestors(_ path: String) -> [String] {
        var result: [String] = []
        var p = path
        while p != "/" && !p.isEmpty {
            p = FileSystem.split(p).directory
            result.append(p)
        }
        return result
    }

    static func physicalMemory() -> Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? pages * size : Int.max
    }

    /// Runs the shard's jobs, K at a time; `report` gets each result in manifest order
    /// (a job's line waits for the jobs before it), one call at a time.
    public static func run(_ options: BatchOptions, report: @escaping @Sendable (BatchJobResult) -> Void = { _ in }) throws -> BatchSummary {
        let started = Date()
        guard options.jobs >= 1 else { throw BatchError.jobsOutOfRange(options.jobs) }
        let all = try plan(options)
        let mine = BatchSharding.positions(of: options.shard, total: all.count).map { all[$0] }
        let workers = min(options.jobs, max(mine.count, 1))
        if workers > 1, let largest = mine.max(by: { $0.job.memoryEstimate < $1.job.memoryEstimate }) {
            let limit = options.memoryLimit ?? physicalMemory()
            let (total, overflow) = largest.job.memoryEstimate.multipliedReportingOverflow(by: workers)
            if overflow || total > limit {
                throw BatchError.memory(jobs: workers, estimate: largest.job.memoryEstimate, line: largest.line, limit: limit)
            }
        }
        let state = RunState(count: mine.count, report: report)
        let verify = options.verifyInputs
        let threads = (0..<workers).map { _ in
            Thread {
                while let i = state.next() {
                    state.finish(i, runOne(mine[i], verifyInputs: verify))
                }
                state.workerDone()
            }
        }
        for t in threads {
            t.stackSize = 8 << 20
            t.start()
        }
        state.waitForWorkers(workers)
        return BatchSummary(manifestJobs: all.count, results: state.results.compactMap { $0 }, shard: options.shard,
                            seconds: Date().timeIntervalSince(started), interrupted: Interrupts.signal)
    }

    /// Shared by the worker threads: the next job to start and the results in order.
    final class RunState: @unchecked Sendable {
        // Safe: every stored property is read and written only while holding `condition`.
        private let condition = NSCondition()
        private var nextIndex = 0
        private var reported = 0
        private var done = 0
        private(set) var results: [BatchJobResult?]
        private let report: @Sendable (BatchJobResult) -> Void

        init(count: Int, report: @escaping @Sendable (BatchJobResult) -> Void) {
            results = Array(repeating: nil, count: count)
            self.report = report
        }

        /// The next job to start; nil when all have started (or, after an interrupt, the
        /// rest are recorded as not started).
        func next() -> Int? {
            condition.lock()
            defer { condition.unlock() }
            guard nextIndex < results.count else { return nil }
            let i = nextIndex
            nextIndex += 1
            return i
        }

        func finish(_ i: Int, _ result: BatchJobResult) {
            condition.lock()
            defer { condition.unlock() }
            results[i] = result
            // In manifest order: report the finished prefix.
            while reported < results.count, let r = results[reported] {
                report(r)
                reported += 1
            }
        }

        func workerDone() {
            condition.lock()
            done += 1
            condition.broadcast()
            condition.unlock()
        }

        func waitForWorkers(_ n: Int) {
            condition.lock()
            while done < n { condition.wait() }
            condition.unlock()
        }
    }

    static func runOne(_ planned: PlannedBatchJob, verifyInputs: Bool) -> BatchJobResult {
        let started = Date()
        if let sig = Interrupts.signal {
            return BatchJobResult(line: planned.line, op: planned.op, output: planned.output, skipped: false,
                                  error: BatchError.notStarted(signal: sig), seconds: 0, warnings: [])
        }
        let (outcome, warnings) = Warnings.collect { () -> Result<Bool, any Error> in
            Result { try execute(planned, verifyInputs: verifyInputs) }
        }
        var result = BatchJobResult(line: planned.line, op: planned.op, output: planned.output, skipped: false, error: nil,
                                    seconds: Date().timeIntervalSince(started), warnings: warnings)
        switch outcome {
        case let .success(skipped): result.skipped = skipped
        case let .failure(error): result.error = error
        }
        return result
    }

    /// Runs one job unless its output is already done; returns whether it was skipped.
    static func execute(_ planned: PlannedBatchJob, verifyInputs: Bool) throws -> Bool {
        let job = planned.job
        let fingerprint = BatchFingerprint.metadata(op: planned.op, normalized: job.normalized, inputs: job.inputs)
        let content = verifyInputs ? try BatchFingerprint.contents(op: planned.op, normalized: job.normalized, inputs: job.inputs) : nil
        let output = planned.output
        if FileSystem.exists(output) {
            let isDirectory = FileSystem.isDirectory(output)
            let record = BatchRecord.read(BatchRecord.path(forOutput: output, isDirectory: isDirectory))
            if let record {
                let sameInputs = (content != nil && record.contentFingerprint == content) || record.fingerprint == fingerprint
                let sameOutput = isDirectory || record.outputIdentity == BatchRecord.identity(of: output)
                if record.op == planned.op && sameInputs && sameOutput { return true }
                if !job.overwrite { throw BatchError.outputChanged(output: output, line: planned.line, recordedLine: record.line) }
            } else if !job.overwrite {
                throw BatchError.outputWithoutRecord(output: output, line: planned.line)
            }
        }
        let record = BatchRecord(op: planned.op, line: planned.line, fingerprint: fingerprint, contentFingerprint: content)
        let target = resolved(output)
        let written = RecordFlag()
        let hook = OutputInstallHook.Step { temporary, final, kind in
            guard resolved(final) == target else { return }
            if kind == .directory {
                try record.write(to: FileSystem.join(temporary, BatchRecord.name))
            } else {
                var beside = record
                beside.outputIdentity = BatchRecord.identity(of: temporary)
                try beside.write(to: BatchRecord.path(forOutput: final, isDirectory: false))
            }
            written.set()
        }
        try OutputInstallHook.$beforeInstall.withValue(hook) { try job.run() }
        if !written.value {
            // An output installed some other way: the record goes in now that it is complete.
            let isDirectory = FileSystem.isDirectory(output)
            var late = record
            if !isDirectory { late.outputIdentity = BatchRecord.identity(of: output) }
            try late.write(to: BatchRecord.path(forOutput: output, isDirectory: isDirectory))
        }
        return false
    }

    final class RecordFlag: @unchecked Sendable {
        // Safe: `flag` is only touched while holding `lock`.
        private let lock = NSLock()
        private var flag = false
        func set() { lock.withLock { flag = true } }
        var value: Bool { lock.withLock { flag } }
    }
}
