import ArgumentParser
import Foundation
import OpConvertKit

struct Batch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a JSON-lines manifest of merge, materialize, convert, extract, resize and combine jobs, resumably, across shards.",
        discussion: """
        Each line of MANIFEST is a job: {"op": "merge", "args": {...}, "output": "out/x"}, with args \
        named as the command's options (base, adapters (paths or {"path", "weight"}), weight, dtype, \
        max_shard_size, key_map, overwrite, ...); relative paths are taken from the manifest's \
        directory. Jobs run with the same library calls as the commands, --jobs at a time; one \
        failing job does not stop the others. A finished output holds .opconvert-batch.json (a file \
        output: .NAME.opconvert-batch.json beside it) with the job's fingerprint (SHA-256 of the op, \
        its options, and its inputs' paths, sizes, mtimes and inodes); a rerun skips jobs whose \
        output has the same fingerprint, refuses (73) outputs with another one unless the job sets \
        overwrite, and runs the rest. --shard I/N (0-based) runs jobs I, I+N, ...; without it \
        SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (less SLURM_ARRAY_TASK_MIN) or Kubernetes' \
        JOB_COMPLETION_INDEX with --shard-count or OPCONVERT_SHARD_COUNT choose the shard. One line \
        per job on stdout in manifest order (JSON with --json, then a summary line). Exit 0 only if \
        every job succeeded or was skipped; else the failing jobs' exit status, or 1 when they differ; \
        130 after Ctrl-C (running jobs unwind, no new ones start).
        """
    )

    @Argument(help: "JSON-lines manifest, one job a line.")
    var manifest: String

    @Option(help: "Run shard I of N (0-based, I in 0..N-1): jobs I, I+N, I+2N, ... of the manifest.")
    var shard: String?

    @Option(help: "Shard count for Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX); default OPCONVERT_SHARD_COUNT.")
    var shardCount: Int?

    @Option(help: "Jobs run at once (each job's arithmetic already uses every core).")
    var jobs: Int = 1

    @Flag(help: "Also hash the inputs' contents into the fingerprint (reads every input once).")
    var verifyInputs = false

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if jobs < 1 { throw ValidationError("--jobs must be at least 1.") }
    }

    func run() throws {
        let json = common.json
        var summary: BatchSummary?
        try runReportingErrors(json: json) {
            let flag = try shard.map { try BatchSharding.parse($0) }
            let chosen = try BatchSharding.resolve(flag: flag, shardCount: shardCount, environment: ProcessInfo.processInfo.environment)
            if !json, let chosen {
                printError("opconvert: batch: shard \(chosen) (from \(chosen.source))")
            }
            let options = BatchOptions(manifest: manifest, shard: chosen, jobs: jobs, verifyInputs: verifyInputs)
            summary = try BatchRunner.run(options) { result in
                if json { printBatchResultJSON(result) } else { printBatchResultLine(result) }
            }
        }
        guard let summary else { return }
        if json { printBatchSummaryJSON(summary) } else {
            printError("opconvert: batch: \(summary.results.count) of \(summary.manifestJobs) jobs: \(summary.succeeded) ran, \(summary.skipped) skipped, \(summary.failed) failed in \(String(format: "%.2f", summary.seconds)) s")
        }
        if let sig = summary.interrupted { Interrupts.finish(sig) }
        if summary.exitCode != 0 { throw ExitCode(summary.exitCode) }
    }
}

/// One line of the JSON contract: the job's or summary's fields plus "command", "version"
/// and "non_finite_numbers" (batch's numbers are always finite), as every command has.
private func jsonLine(_ fields: [String: Any]) -> Data {
    var object = fields
    object["command"] = "batch"
    object["version"] = OpConvertVersion.string
    object["non_finite_numbers"] = [String: String]()
    if object["warnings"] == nil { object["warnings"] = [String]() }
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    return data + Data("\n".utf8)
}

/// {"ok", "line", "op", "output", "exit_code", "error", "seconds", "skipped", "warnings"}.
func printBatchResultJSON(_ r: BatchJobResult) {
    let object: [String: Any] = [
        "ok": r.ok, "line": r.line, "op": r.op, "output": FileSystem.absolute(r.output), "exit_code": Int(r.exitCode),
        "error": r.error.map { "\($0)".displayEscaped } ?? NSNull(), "seconds": (r.seconds * 1000).rounded() / 1000,
        "skipped": r.skipped, "warnings": r.warnings,
    ]
    FileHandle.standardOutput.write(jsonLine(object))
}

func printBatchResultLine(_ r: BatchJobResult) {
    let what: String
    if r.skipped { what = "skipped (output up to date)" } else if let e = r.error {
        what = "FAILED (exit \(r.exitCode)): \("\(e)".displayEscaped)"
    } else {
        what = "ok in \(String(format: "%.2f", r.seconds)) s"
    }
    printWarnings(r.warnings)
    // Written through at once: an interrupt ends the process without flushing stdio buffers.
    FileHandle.standardOutput.write(Data("line \(r.line) \(r.op) \(r.output): \(what)\n".utf8))
}

func printBatchSummaryJSON(_ s: BatchSummary) {
    let object: [String: Any] = [
        "summary": true, "ok": s.exitCode == 0, "exit_code": Int(s.exitCode), "manifest_jobs": s.manifestJobs,
        "jobs": s.results.count, "succeeded": s.succeeded, "skipped": s.skipped, "failed": s.failed,
        "shard": s.shard.map { "\($0)" } ?? NSNull(), "seconds": (s.seconds * 1000).rounded() / 1000,
    ]
    FileHandle.standardOutput.write(jsonLine(object))
}
