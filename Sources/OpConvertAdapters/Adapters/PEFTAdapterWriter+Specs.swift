import OpConvertCore
import OpConvertTensors

extension PEFTAdapterWriter {
    /// The tensors `write` stores for these layouts (PEFT's key names), for plans that
    /// size the file before it is written.
    public static func specs(_ layouts: [AdapterModuleLayout], dtype: DType) -> [TensorSpec] {
        layouts.flatMap { m -> [TensorSpec] in
            let key = "base_model.model.\(m.path)"
            return [TensorSpec(name: key + ".lora_A.weight", dtype: dtype, shape: m.aShape),
                    TensorSpec(name: key + ".lora_B.weight", dtype: dtype, shape: m.bShape)]
                + (m.magnitudeCount.map { [TensorSpec(name: key + ".lora_magnitude_vector", dtype: dtype, shape: [$0])] } ?? [])
        }
    }
}
