import ArgumentParser
import OpConvertKit

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a merged model against BASE + adapters, element by element.",
        discussion: """
        Every tensor the adapters change is recomputed in f64 from BASE and the adapters; each \
        stored element must be one of the two values of its dtype around that reference (one \
        rounding). Reports per tensor the max and mean error in ulps of the stored dtype. \
        Tensors no adapter changes must be byte-identical to BASE. Exits 65 naming the first \
        tensor that fails.
        """
    )

    @Argument(help: "BASE, then the adapters, then the MERGED model.")
    var paths: [String]

    @Option(name: .customLong("weight"), help: "Weight of each adapter, in order (repeat once per adapter).")
    var weights: [Double] = []

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if paths.count < 3 { throw ValidationError("Give BASE, at least one ADAPTER, and MERGED.") }
        if !weights.isEmpty && weights.count != paths.count - 2 {
            throw ValidationError("--weight was given \(weights.count) times for \(paths.count - 2) adapters; give it once per adapter or not at all.")
        }
        if weights.contains(where: { !$0.isFinite }) { throw ValidationError("--weight must be a finite number.") }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let options = VerifyOptions(base: paths[0], adapters: Array(paths.dropFirst().dropLast()), weights: weights, merged: paths.last!)
            let (summary, warnings) = try Warnings.collect { try Verifier.run(options) }
            printWarnings(warnings)
            let failure = summary.failure
            if common.json {
                var extra: [String: JSONExtra] = [:]
                if let failure { extra = JSONResult.failure(message: failure.description.displayEscaped, exitCode: ExitStatus.of(failure).rawValue) }
                try printJSON(summary, warnings: warnings, extra: extra)
            } else {
                for t in summary.changed {
                    print("  \(t.name) (\(t.dtype)): max \(String(format: "%.3f", t.maxUlp)) ulp, mean \(String(format: "%.3f", t.meanUlp)) ulp\(t.outside > 0 ? ", \(t.outside) outside one rounding" : "")")
                }
                print("\(summary.ok ? "ok" : "FAILED"): \(summary.changed.count) changed tensors checked, \(summary.untouchedEqual) untouched byte-identical")
            }
            if let failure {
                printError("opconvert: error: \(failure.description.displayEscaped)")
                throw ExitCode(ExitStatus.of(failure).rawValue)
            }
        }
    }
}
