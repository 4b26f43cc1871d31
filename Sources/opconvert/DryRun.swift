import ArgumentParser
import OpConvertKit

/// --dry-run of merge, convert and materialize.
struct DryRunOption: ParsableArguments {
    @Flag(name: .customLong("dry-run"), help: "Resolve everything (inputs, module matches, scales, dtypes, output files and sizes, free space) and print the plan; write nothing.")
    var enabled = false
}

/// Prints a plan as the table or the JSON result.
func printPlan(_ plan: DryRunPlan, json: Bool, warnings: [String]) throws {
    printWarnings(warnings)
    if json { try printJSON(plan, warnings: warnings) } else { print(plan.render(), terminator: "") }
}
