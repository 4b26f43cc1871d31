import ArgumentParser
import OpConvertKit

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the tensors, dtypes, shapes, sizes and metadata of a file, index or directory.",
        discussion: "PATH may be a .safetensors file, a *.safetensors.index.json, or a model directory."
    )

    @Argument(help: "File, index or directory to inspect.")
    var path: String

    @Flag(help: "List every tensor (text output shows the first 50 otherwise).")
    var all = false

    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors(json: common.json) {
            let report = try Inspector.inspect(path)
            if common.json {
                try printJSON(report)
            } else {
                print(Inspector.render(report, limit: all ? nil : 50), terminator: "")
            }
        }
    }
}
