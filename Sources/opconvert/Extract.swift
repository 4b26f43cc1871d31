import ArgumentParser
import OpConvertKit

/// --rank R | --energy F, shared by extract, resize and combine.
struct RankOptions: ParsableArguments {
    @Option(help: "Keep this many singular values per module.")
    var rank: Int?

    @Option(help: "Keep each module's smallest rank whose retained squared Frobenius fraction is at least F (0 < F <= 1).")
    var energy: Double?

    var target: RankTarget? {
        if let rank { return .rank(rank) }
        if let energy { return .energy(energy) }
        return nil
    }

    func validate(required: Bool) throws {
        if rank != nil && energy != nil { throw ValidationError("Give --rank or --energy, not both.") }
        if required && target == nil { throw ValidationError("Give --rank R or --energy F.") }
        if let rank, rank < 1 { throw ValidationError("--rank must be at least 1.") }
        if let energy, !(energy > 0 && energy <= 1) { throw ValidationError("--energy must be in (0, 1].") }
    }
}

func formatModuleLine(_ name: String, rank: Int, energy: Double, error: Double) -> String {
    "  \(name): rank \(rank), energy \(String(format: "%.6f", energy)), relative error \(String(format: "%.3e", error))"
}

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Extract a LoRA adapter from the difference of a fine-tuned model and its base.",
        discussion: """
        For every linear-like 2-D weight present in BASE and TUNED with the same shape (or those \
        named by --target-modules), ΔW = TUNED - BASE is computed in f64 and truncated by SVD: \
        randomized (Gaussian test matrix from --seed, --oversample columns beyond the rank, \
        --power-iterations with QR re-orthonormalization) by default, LAPACK's full gesdd with \
        --exact or --energy. The adapter is PEFT LoRA with B = U·S, A = Vᵀ and lora_alpha = r \
        (scaling 1), f32 factors. Tensors whose shapes differ and changed embeddings are saved \
        whole (modules_to_save); unchanged weights are skipped. One module in memory at a time.
        """
    )

    @Argument(help: "Base model directory or .safetensors file.")
    var base: String

    @Argument(help: "Fine-tuned model directory or .safetensors file.")
    var tuned: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var rankOptions: RankOptions

    @Flag(help: "Full SVD (LAPACK gesdd) of every delta instead of the randomized SVD.")
    var exact = false

    @Option(help: "Comma-separated module names or path suffixes to extract (default: every linear-like 2-D weight).")
    var targetModules: String?

    @Option(help: "Randomized SVD: extra test-matrix columns beyond the rank.")
    var oversample = 10

    @Option(help: "Randomized SVD: power iterations.")
    var powerIterations = 2

    @Option(help: "Randomized SVD: seed of the Gaussian test matrix.")
    var seed: UInt64 = 0

    @OptionGroup var common: CommonOptions

    func validate() throws {
        try rankOptions.validate(required: true)
        if oversample < 0 || powerIterations < 0 { throw ValidationError("--oversample and --power-iterations must not be negative.") }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let targets = targetModules.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
            let options = ExtractOptions(base: base, tuned: tuned, output: output.output, target: rankOptions.target!, exact: exact,
                                         targetModules: targets, oversample: oversample, powerIterations: powerIterations,
                                         seed: seed, overwrite: output.overwrite)
            let (summary, warnings) = try Warnings.collect { try Extractor.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary, warnings: warnings)
            } else {
                print("extracted \(summary.modules.count) module\(summary.modules.count == 1 ? "" : "s") (\(summary.method) SVD) into \(summary.output) in \(String(format: "%.2f", summary.seconds)) s")
                for m in summary.modules { print(formatModuleLine(m.name, rank: m.rank, energy: m.retainedEnergy, error: m.relativeError)) }
                if !summary.unchanged.isEmpty { print("unchanged (skipped): \(summary.unchanged.count)") }
                if !summary.modulesToSave.isEmpty { print("saved whole (modules_to_save): \(summary.modulesToSave.joined(separator: ", "))") }
            }
        }
    }
}
