import Foundation
import OpConvertCore
import OpConvertTensors

/// OP-LoRA/OP-DoRA checkpoints (op_config.json + op_model.safetensors[.zst]; notes/op-checkpoint.md):
/// opened by materializing every module's A, B (and m) from its hypernetwork.
public enum OPCheckpointFormat: AdapterFormat {
    public static let id = AdapterFormatID.op
    public static let expected = "an OP checkpoint directory (op_config.json + op_model.safetensors)"

    public static func probe(_ path: String) -> Bool {
        FileSystem.isDirectory(path) && OPCheckpoint.isCheckpoint(path)
    }

    /// Module shapes come from `options.base` when the checkpoint cannot tell them.
    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        try OPCheckpoint(path: path, keyMap: options.keyMap).adapter(base: options.base)
    }

    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let checkpoint: OPCheckpoint
        do {
            checkpoint = try OPCheckpoint(path: path, keyMap: options.keyMap)
        } catch let error as OPError {
            guard case .unrecognizedNames = error else { throw error }
            // Still show what is there, with the hint on how to read it.
            return AdapterSummary(kind: "op-checkpoint (unrecognized names)", weightsFile: OPCheckpoint.weightsFile(in: path),
                                  details: ["suggestion": "tensor names do not follow OP v1; pass --key-map FILE (ordered regex rename rules, see docs/op-checkpoint.md) to read this checkpoint"],
                                  modules: [])
        }
        let train = checkpoint.trainParameters, inference = checkpoint.inferenceParameters
        let separate = checkpoint.modules.contains { if case .separate = $0.generator { return true } else { return false } }
        let details = ["format_version": "1", "variant": checkpoint.isDoRA ? "op-dora" : "op-lora",
                       "mlp": separate ? "separate A/B MLPs" : "joint MLP",
                       "hidden": String(checkpoint.config.hidden), "z_dim": String(checkpoint.config.zDim),
                       "modules": String(checkpoint.modules.count),
                       "train_parameters": String(train), "inference_parameters": String(inference),
                       "train_to_inference_ratio": String(format: "%.1f", Double(train) / Double(max(inference, 1)))]
        return AdapterSummary(kind: "op-checkpoint", weightsFile: OPCheckpoint.weightsFile(in: path), details: details,
                              modules: checkpoint.modules.map {
                                  .init(name: $0.path, rank: $0.rank, trainParameters: $0.trainParameters, inferenceParameters: $0.inferenceParameters)
                              })
    }
}
