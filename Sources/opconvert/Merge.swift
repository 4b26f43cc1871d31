import ArgumentParser
import OpConvertKit

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fold LoRA/DoRA adapters (PEFT directories, OP checkpoints, kohya files, ...) into base model weights.",
        discussion: """
        BASE is a Hugging Face model directory (one file or shards with an index), a single \
        .safetensors file (Stable Diffusion LDM/SGM checkpoints included) or a diffusers pipeline \
        directory (model_index.json; written back in its own layout, changed components \
        rewritten). Adapters are applied in the order given; --weight is given once per \
        adapter, in the same order (default 1). Each adapter module must match exactly one base \
        tensor, else nothing is written. Merging runs in f32 (W + s·B·A, DoRA rescaled per \
        output feature) and rounds once to each tensor's dtype (or --dtype). The output is a \
        model directory with config, tokenizer and other files copied, written under a \
        temporary name and renamed into place when complete.
        """
    )

    @Argument(help: "Base model directory or .safetensors file.")
    var base: String

    @Argument(help: "Adapter directories or files, applied in order.")
    var adapters: [String]

    @Option(name: .customLong("weight"), help: "Weight of each adapter, in order (repeat once per adapter).")
    var weights: [Double] = []

    @OptionGroup var output: OutputOptions

    @Option(help: "Cast every float tensor of the output to f32, bf16 or f16 (default: keep each tensor's dtype).")
    var dtype: FloatDType?

    @Option(help: "Largest shard of the output directory (5GB, 500MB, 2GiB).")
    var maxShardSize: ByteSize?

    @Option(help: "OP checkpoints saved by other trainers: JSON file of regex rename rules onto OP v1 names.")
    var keyMap: String?

    @Flag(help: "Refuse results with non-finite values or zero-norm DoRA rows, naming the module.")
    var safe = false

    @OptionGroup var common: CommonOptions

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("Give at least one adapter after BASE.") }
        if !weights.isEmpty && weights.count != adapters.count {
            throw ValidationError("--weight was given \(weights.count) times for \(adapters.count) adapters; give it once per adapter or not at all.")
        }
        if weights.contains(where: { !$0.isFinite }) { throw ValidationError("--weight must be a finite number.") }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let ws = weights.isEmpty ? Array(repeating: 1.0, count: adapters.count) : weights
            var options = MergeOptions(
                base: base, adapters: Array(zip(adapters, ws)).map { (path: $0.0, weight: $0.1) }, output: output.output,
                dtype: dtype, maxShardSize: maxShardSize?.bytes ?? 5_000_000_000, overwrite: output.overwrite,
                safe: safe, showProgress: common.json ? false : common.progress)
            options.keyMap = keyMap
            let (summary, warnings) = try Warnings.collect { try Merger.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary, warnings: warnings)
            } else {
                print("merged \(summary.adapters.count) adapter\(summary.adapters.count == 1 ? "" : "s") into \(summary.output): \(summary.mergedTensors) of \(summary.tensors) tensors changed, \(formatBytes(summary.outputBytes)) in \(String(format: "%.2f", summary.seconds)) s")
            }
        }
    }
}
