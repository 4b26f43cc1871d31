import ArgumentParser
import OpConvertKit

struct Resize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change the rank of a LoRA adapter by the exact truncated SVD of each module's s·B·A.",
        discussion: """
        Each module's product s·B·A is decomposed without forming it (QR of B and Aᵀ, SVD of the \
        r x r core) and truncated to --rank R or to the smallest rank keeping --energy F of its \
        squared Frobenius norm. The output is PEFT LoRA with the scale folded into B (lora_alpha \
        = r, scaling 1). DoRA adapters are refused: truncation would change the norms DoRA \
        rescales by.
        """
    )

    @Argument(help: "Adapter directory (PEFT, MLX, ...).")
    var adapter: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var rankOptions: RankOptions
    @OptionGroup var common: CommonOptions

    func validate() throws { try rankOptions.validate(required: true) }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let options = ResizeOptions(adapter: adapter, output: output.output, target: rankOptions.target!, overwrite: output.overwrite)
            let (summary, warnings) = try Warnings.collect { try Resizer.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary, warnings: warnings)
            } else {
                print("resized \(summary.modules.count) module\(summary.modules.count == 1 ? "" : "s") into \(summary.output)")
                for m in summary.modules { print(formatModuleLine(m.name, rank: m.rank, energy: m.retainedEnergy, error: m.relativeError) + " (was \(m.rankBefore))") }
            }
        }
    }
}
