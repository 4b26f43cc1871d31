import ArgumentParser
import OpConvertKit

extension TieMode: ExpressibleByArgument {}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fold LoRA/DoRA adapters (PEFT directories, OP checkpoints, kohya files, ...) into base model weights.",
        discussion: """
        BASE is a Hugging Face model directory (one file or shards with an index), a single \
        .safetensors file (Stable Diffusion LDM/SGM checkpoints included) or a diffusers pipeline \
        directory (model_index.json; written back in its own layout, changed components \
        rewritten). Adapters are applied in the order given; --weight is given once per \
        adapter, in the same order (default 1). Each adapter module must match exactly one base \
        tensor, else nothing is written. Merging runs in f64 (W + s·B·A, DoRA rescaled per \
        output feature) and rounds once to each tensor's dtype (or --dtype). The output is a \
        model directory with config, tokenizer and other files copied, written under a \
        temporary name and renamed into place when complete.
        """
    )

    @Argument(help: "Base model directory or .safetensors file, or a Hugging Face id (org/name) in the local hub cache; omitted when the first argument is an adapter (its base_model_name_or_path is used).", completion: .file())
    var base: String

    @Argument(help: "Adapter directories or files, applied in order; ADAPTER:WEIGHT sets one's weight (llama.cpp's --lora-scaled).", completion: .file())
    var adapters: [String] = []

    // Unconditional: `--weight -1` takes the negative number as the value.
    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: "Weight of each adapter, in order (repeat once per adapter; --weight -1 and --weight=-1 both work).")
    var weights: [Double] = []

    @Option(name: .customLong("ratios"), parsing: .unconditionalSingleValue, help: "kohya's name for the weights: a comma-separated list in adapter order (instead of --weight).")
    var ratios: [String] = []

    @OptionGroup var output: OutputOptions

    @Option(help: "Cast every float tensor of the output to f32, bf16 or f16 (default: keep each tensor's dtype).")
    var dtype: FloatDType?

    @Option(help: "Largest shard of the output directory (5GB, 500MB, 2GiB).")
    var maxShardSize: ByteSize?

    @Option(help: "OP checkpoints saved by other trainers: JSON file of regex rename rules onto OP v1 names.", completion: .file(extensions: ["json"]))
    var keyMap: String?

    @Option(help: "When an adapter changes one side of tied input/output embeddings: untie (write both as the adapted model uses them, tie_word_embeddings false), keep (PEFT's merge into the shared tensor), refuse (exit 69).")
    var tieMode: TieMode = .untie

    @Flag(help: "Refuse results with non-finite values or zero-norm DoRA rows, naming the module.")
    var safe = false

    @OptionGroup var dryRun: DryRunOption

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if weights.contains(where: { !$0.isFinite }) { throw ValidationError("--weight must be a finite number.") }
        if !weights.isEmpty && !ratios.isEmpty { throw ValidationError("--ratios is another name for --weight; give one of them.") }
        _ = try ratioWeights()
    }

    /// --ratios' comma-separated lists, in order.
    func ratioWeights() throws -> [Double] {
        try ratios.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }.map { s in
            guard let v = Double(s.trimmingCharacters(in: .whitespaces)), v.isFinite else {
                throw ValidationError("--ratios: \"\(s)\" is not a finite number")
            }
            return v
        }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let inputs = try ModelSources.mergeInputs([base] + adapters, weights: weights.isEmpty ? try ratioWeights() : weights)
            var options = MergeOptions(
                base: inputs.base, adapters: inputs.adapters, output: output.output,
                dtype: dtype, maxShardSize: maxShardSize?.bytes ?? 5_000_000_000, overwrite: output.overwrite,
                safe: safe, showProgress: common.json ? false : common.progress)
            options.keyMap = keyMap
            options.tieMode = tieMode
            options.modelCardVersion = OpConvertVersion.string
            if dryRun.enabled {
                let (plan, warnings) = try Warnings.collect { try Merger.dryRun(options) }
                return try printPlan(plan, json: common.json, warnings: warnings)
            }
            let (summary, warnings) = try Warnings.collect { try Merger.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary.contractForm(), warnings: warnings)
            } else {
                print("merged \(summary.adapters.count) adapter\(summary.adapters.count == 1 ? "" : "s") into \(summary.output): \(summary.mergedTensors) of \(summary.tensors) tensors changed, \(formatBytes(summary.outputBytes)) in \(String(format: "%.2f", summary.seconds)) s")
            }
        }
    }
}
