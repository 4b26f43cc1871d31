import ArgumentParser
import OpConvertKit

struct Materialize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn an OP-LoRA/OP-DoRA checkpoint into a standard PEFT LoRA/DoRA adapter.",
        discussion: """
        Runs each module's hypernetwork once in f32 (h = ReLU(W1 z + c1); (A;B) = W2 h + c2; \
        OP-DoRA's magnitude head m = Wm h + cm + offset) and writes adapter_config.json (the \
        checkpoint's peft_config, use_dora set when there is a magnitude head) and \
        adapter_model.safetensors with PEFT's key names. A module's input/output sizes come \
        from --base when given, else from the checkpoint (shapes recorded by `opconvert \
        train`, separate A/B MLPs, or the magnitude head). --to writes another adapter \
        format instead (mlx, gguf).
        """
    )

    @Argument(help: "OP checkpoint directory (op_config.json + op_model.safetensors[.zst]).", completion: .directory)
    var checkpoint: String

    @OptionGroup var output: OutputOptions

    @Option(help: "Store the adapter's tensors as f32 (PEFT's default), bf16 or f16.")
    var dtype: FloatDType = .f32

    @Option(help: "Base model (directory, .safetensors, or org/name in the local Hugging Face cache) to read module shapes from (default: the checkpoint's base_model_name_or_path when it is here).", completion: .file())
    var base: String?

    @Option(help: "JSON file of ordered regex rename rules mapping another trainer's tensor names onto OP v1 names.", completion: .file(extensions: ["json"]))
    var keyMap: String?

    @Option(help: "Adapter format to write: peft (default), mlx or gguf (GGUF needs --base).")
    var to: AdapterFormatID = .peft

    @OptionGroup var dryRun: DryRunOption

    @OptionGroup var common: CommonOptions

    enum Outcome { case plan(DryRunPlan), done(MaterializeSummary) }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let (result, warnings) = try Warnings.collect { () throws -> Outcome in
                // No --base: the checkpoint's base_model_name_or_path when it is here (else none, as before).
                let resolvedBase = try base.map { try ModelSources.resolveBase($0) } ?? ModelSources.inferredBase(forAdapter: checkpoint).base
                var options = MaterializeOptions(checkpoint: checkpoint, output: output.output, dtype: dtype,
                                                 base: resolvedBase, keyMap: keyMap, overwrite: output.overwrite)
                options.to = to
                options.modelCardVersion = OpConvertVersion.string
                if dryRun.enabled { return .plan(try Materializer.dryRun(options)) }
                return .done(try Materializer.run(options))
            }
            guard case let .done(s) = result else {
                if case let .plan(plan) = result { try printPlan(plan, json: common.json, warnings: warnings) }
                return
            }
            printWarnings(warnings)
            if common.json {
                try printJSON(s.contractForm(), warnings: warnings)
            } else {
                print("materialized \(s.modules) modules (\(s.dora ? "DoRA" : "LoRA")) into \(s.output): \(s.inferenceParameters) parameters kept of \(s.trainParameters) trained, in \(String(format: "%.2f", s.seconds)) s")
            }
        }
    }
}
