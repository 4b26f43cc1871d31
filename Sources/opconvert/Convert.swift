import ArgumentParser
import OpConvertKit

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-write weights: cast float tensors, re-shard, keep metadata and other files.",
        discussion: """
        INPUT is a .safetensors file, an index, a model directory, a PEFT adapter directory \
        (tensors cast, config kept) or an OP checkpoint (re-written as v1: --key-map renames a \
        foreign layout, --compress writes op_model.safetensors.zst). OUTPUT ending in \
        .safetensors is written as one file; anything else becomes a model directory with \
        shards of at most --max-shard-size, an index, and the input's other files \
        (config.json gets its dtype updated). Non-float tensors are copied byte for byte. \
        Adapters convert between formats with --to (peft, mlx, gguf, kohya, diffusers; GGUF \
        needs --base for the architecture and head counts, kohya and diffusers for the Stable \
        Diffusion base whose names they are re-spelled through): the output holds the same \
        low-rank change. LoHa, LoKr, Tucker and diff modules have no exact LoRA form: with \
        --rank R or --energy F each module's delta is factorized by SVD (as extract does), \
        otherwise they are refused (exit 69).
        """
    )

    @Argument(help: "Input file, index or directory.", completion: .file())
    var input: String

    @OptionGroup var output: OutputOptions

    @Option(help: "Cast floating-point tensors (F32, F64, F16, BF16) to this dtype: f32, bf16 or f16.")
    var dtype: FloatDType?

    @Option(help: "Largest shard for directory outputs, decimal units as transformers (5GB, 500MB) or binary (2GiB).")
    var maxShardSize: ByteSize?

    @Flag(help: "OP checkpoints: write op_model.safetensors.zst (zstd) instead of op_model.safetensors.")
    var compress = false

    @Option(help: "OP checkpoints saved by other trainers: JSON file of ordered regex rename rules onto OP v1 names.", completion: .file(extensions: ["json"]))
    var keyMap: String?

    @Option(help: "Adapter inputs: write this adapter format (peft, mlx, gguf, kohya, diffusers); default: the input's own format.")
    var to: AdapterFormatID?

    @Option(help: "Adapter inputs: the base model the adapter belongs to (module shapes, GGUF's architecture and head counts).", completion: .file())
    var base: String?

    @OptionGroup(title: "Full-delta adapters (LoHa, LoKr, Tucker, diff) to LoRA formats") var rankOptions: RankOptions

    @OptionGroup var dryRun: DryRunOption

    @OptionGroup var common: CommonOptions

    func validate() throws {
        try rankOptions.validate(required: false)
        if rankOptions.target != nil && to == nil {
            throw ValidationError("--rank and --energy factorize an adapter's full-delta modules for --to FORMAT; give --to.")
        }
        if output.output.hasSuffix(".safetensors") && maxShardSize != nil {
            throw ValidationError("--max-shard-size applies to directory outputs; OUTPUT ends in .safetensors, which is one file.")
        }
    }

    func run() throws {
        try runReportingErrors(json: common.json) {
            var options = ConvertOptions(
                input: input, output: output.output, dtype: dtype,
                maxShardSize: maxShardSize?.bytes ?? 5_000_000_000, overwrite: output.overwrite,
                showProgress: common.json ? false : common.progress)
            options.compress = compress
            options.keyMap = keyMap
            options.to = to
            options.lowRank = rankOptions.target
            options.base = try base.map { try ModelSources.resolveBase($0) }
            options.modelCardVersion = OpConvertVersion.string
            if dryRun.enabled {
                let (plan, warnings) = try Warnings.collect { try Converter.dryRun(options) }
                return try printPlan(plan, json: common.json, warnings: warnings)
            }
            let (summary, warnings) = try Warnings.collect { try Converter.run(options) }
            printWarnings(warnings)
            if common.json {
                try printJSON(summary.contractForm(), warnings: warnings)
            } else {
                print("wrote \(summary.output): \(summary.tensors) tensors (\(summary.castTensors) cast, \(summary.copiedTensors) copied), \(formatBytes(summary.outputBytes)) in \(String(format: "%.2f", summary.seconds)) s")
            }
        }
    }
}
