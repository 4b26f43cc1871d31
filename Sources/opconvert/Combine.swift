import ArgumentParser
import OpConvertKit

extension CombineMethod: ExpressibleByArgument {}

struct Combine: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Combine LoRA adapters of one base into one adapter.",
        discussion: """
        cat (default) concatenates the ranks, each adapter's scaling and --weight folded into its \
        B block: merging the result equals merging every input with its weight. svd does cat and \
        then truncates each module exactly (as resize) to --rank R or --energy F. Modules are the \
        union of the inputs'; a module's shapes must agree across adapters. Adapters recording \
        different base_model_name_or_path give a warning.
        """
    )

    @Argument(help: "Adapter directories.")
    var adapters: [String]

    @Option(name: .customLong("weight"), help: "Weight of each adapter, in order (repeat once per adapter).")
    var weights: [Double] = []

    @Option(help: "cat (exact) or svd (cat, then truncated).")
    var method: CombineMethod = .cat

    @OptionGroup var output: OutputOptions
    @OptionGroup var rankOptions: RankOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("Give at least one adapter.") }
        if !weights.isEmpty && weights.count != adapters.count {
            throw ValidationError("--weight was given \(weights.count) times for \(adapters.count) adapters; give it once per adapter or not at all.")
        }
        if weights.contains(where: { !$0.isFinite }) { throw ValidationError("--weight must be a finite number.") }
        try rankOptions.validate(required: method == .svd)
        if method == .cat && rankOptions.target != nil { throw ValidationError("--rank and --energy apply to --method svd only.") }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let options = CombineOptions(adapters: adapters, weights: weights, output: output.output, method: method,
                                         target: rankOptions.target, overwrite: output.overwrite)
            let (summary, warnings) = try Warnings.collect { try Combiner.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary, warnings: warnings)
            } else {
                print("combined \(summary.adapters.count) adapters (\(summary.method)) into \(summary.output): \(summary.modules.count) modules")
                for m in summary.modules { print(formatModuleLine(m.name, rank: m.rank, energy: m.retainedEnergy, error: m.relativeError)) }
            }
        }
    }
}
