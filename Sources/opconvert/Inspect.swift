import ArgumentParser
import OpConvertKit

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the tensors, dtypes, shapes, sizes and metadata of a file, index or directory.",
        discussion: """
        PATH may be a .safetensors(.zst) file, a *.safetensors.index.json, a model directory, a \
        PEFT adapter directory or an OP checkpoint directory. --json prints one object with the \
        stable fields kind, path, files, metadata, tensors, totals (tensors, parameters, bytes, \
        by_dtype), other_files, details and modules.
        """
    )

    @Argument(help: "File, index or directory to inspect.", completion: .file())
    var path: String

    @Flag(help: "List every tensor (text output shows the first 50 otherwise).")
    var all = false

    @Flag(help: "Read every tensor's data (not just the header) and count NaN/Inf values of float tensors.")
    var verify = false

    @Option(help: "For OP checkpoints saved by other trainers: JSON file of regex rename rules onto OP v1 names.", completion: .file(extensions: ["json"]))
    var keyMap: String?

    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors(json: common.json) {
            let (report, warnings) = try Warnings.collect { () throws -> InspectReport in
                var report = try Inspector.inspect(path, keyMap: keyMap)
                if verify { _ = try Inspector.verify(&report, path: path) }
                return report
            }
            printWarnings(warnings)
            // NaN/Inf found by --verify: the report is still printed, then exit 65.
            let failure = verify ? Inspector.nonFiniteError(report) : nil
            if common.json {
                let extra = failure.map { JSONResult.failure(message: $0.description, exitCode: $0.exitStatus.rawValue) } ?? [:]
                try printJSON(report.contractForm(), warnings: warnings, extra: extra)
            } else {
                print(Inspector.render(report, limit: all ? nil : 50), terminator: "")
            }
            if let failure {
                // Thrown as a bare exit code: runReportingErrors would print a second JSON object.
                printError("opconvert: error: \(failure)")
                throw ExitCode(failure.exitStatus.rawValue)
            }
        }
    }
}
