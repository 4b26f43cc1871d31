import OpConvertCore
import OpConvertTensors

/// Finds the base tensor an adapter module refers to. Adapters and bases often disagree on
/// a leading prefix (`model.` when one side was saved from the bare model, `unet.` in
/// diffusers), so besides the exact name a unique match on whole dotted components at
/// either end is accepted; anything else is an error naming the module.
package struct ModuleResolver {
    let names: [String]
    private let exact: Set<String>

    package init(names: [String]) {
        self.names = names
        exact = Set(names)
    }

    package enum Resolution { case found(String), none, ambiguous([String]) }

    package func resolve(_ wanted: String) -> Resolution {
        if exact.contains(wanted) { return .found(wanted) }
        let candidates = names.filter { $0.hasSuffix("." + wanted) || wanted.hasSuffix("." + $0) }
        switch candidates.count {
        case 0: return .none
        case 1: return .found(candidates[0])
        default: return .ambiguous(candidates)
        }
    }
}
