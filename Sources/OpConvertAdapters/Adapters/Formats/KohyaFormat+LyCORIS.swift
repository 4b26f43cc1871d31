import OpConvertCore
import OpConvertTensors

// Placeholder: the LyCORIS families (LoHa, LoKr, Tucker lora_mid, diff) are sdlyco's; its
// version of this file replaces this one. Until then their keys are refused as unsupported.
extension KohyaFormat {
    package static var lycorisFamilies: [KohyaModuleFamily] { [] }
}
