import ArgumentParser
import Foundation
import OpConvertKit

/// `opconvert plugin list|check|bench`: the kernel plugins next to opconvert, a
/// conformance suite for any plugin, and a benchmark. Parsing and printing only.
struct Plugin: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, check and benchmark kernel plugins (CPU, CUDA).",
        subcommands: [PluginList.self, PluginCheck.self, PluginBench.self]
    )
}

/// --device / --plugin, as `train` takes them.
struct PluginChoice: ParsableArguments {
    @Option(help: ArgumentHelp("auto, cpu, cuda or cuda:N (auto: CUDA when usable, else CPU).", valueName: "device"))
    var device = "auto"
    @Option(help: "A kernel plugin shared library to use instead (--device cuda:N then picks its device N).", completion: .file(extensions: ["so", "dylib"]))
    var plugin: String?

    func validate() throws { _ = try parseDevice(device) }
    var choice: DeviceChoice { (try? DeviceChoice(parsing: device)) ?? .auto }  // checked in validate()
}

struct PluginList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "The plugins found next to opconvert, their probe results and devices."
    )
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors(json: common.json) {
            let r = PluginInventory.list()
            if common.json { try printJSON(r); return }
            for p in r.plugins {
                let head = p.kind.padding(toLength: 5, withPad: " ", startingAt: 0)
                guard let path = p.path else {
                    print("\(head) \(p.library): not found")
                    continue
                }
                print("\(head) \(path)" + (p.name.map { ": \($0), ABI version \(p.abiVersion ?? 0)" } ?? ""))
                if let probe = p.probe {
                    print("      probe: " + (probe.ok ? "ok, \(probe.deviceCount) device\(probe.deviceCount == 1 ? "" : "s")" : "unavailable: \(probe.reason)")
                          + (probe.ok && !probe.reason.isEmpty ? " (\(probe.reason))" : ""))
                }
                for d in p.devices {
                    let memory = String(format: "%.1f GiB", Double(d.totalMemoryBytes) / Double(1 << 30))
                    let cc = d.computeCapability.map { ", compute capability \($0), \(d.multiprocessors) SMs" } ?? ""
                    print("      device \(d.index): \(d.name), \(memory)\(cc)")
                }
                if let e = p.error { print("      error: \(e)") }
            }
            print("searched: \(r.searched.joined(separator: ", "))")
        }
    }
}

struct PluginCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Run the conformance suite on a plugin: every ABI function against double-precision references.",
        discussion: """
        Shapes from empty to 256x384x320, all transposes, padded strides, pointers 4 bytes \
        into an allocation, the aliasing the ABI allows, error returns and determinism; one \
        line per case, then `N passed, M failed`. Exit 0 when none failed, 1 when some did \
        ("plugin check failed"). --compile-only calls compile_kernels for sm_80 and sm_90 \
        (no context, no GPU needed; with --device auto, the CUDA plugin whenever it is \
        built); a plugin that compiles nothing passes with 0 cases and says so.
        """
    )
    @OptionGroup var choice: PluginChoice
    @Flag(help: "Only compile the plugin's run-time kernels for sm_80 and sm_90 (no device needed).")
    var compileOnly = false
    @OptionGroup var common: CommonOptions

    func run() throws {
        try runReportingErrors(json: common.json) {
            let plugin: KernelPlugin, device: Int, label: String
            if compileOnly {
                plugin = try DeviceSelection.plugin(for: choice.choice, pluginPath: choice.plugin)
                (device, label) = (choice.choice.index, plugin.name)
            } else {
                let selected = try DeviceSelection.select(choice.choice, pluginPath: choice.plugin)
                (plugin, device, label) = (selected.plugin, selected.device, selected.label)
            }
            let json = common.json
            let report = PluginConformance(plugin: plugin, device: device)
                .run(compileOnly: compileOnly, deviceLabel: label) { c in
                    // Flushed per case: a plugin that crashes mid-suite still shows where.
                    if !json { print(c.line); fflush(nil) }
                }
            let failure = report.failed > 0
                ? PluginError.conformanceFailed(plugin: plugin.name, failed: report.failed, total: report.cases.count) : nil
            if json {
                try printJSON(report, extra: failure.map { JSONResult.failure(message: $0.description, exitCode: $0.exitStatus.rawValue) } ?? [:])
            } else {
                for n in report.notes { print("note: \(n)") }
                print("\(report.passed) passed, \(report.failed) failed")
            }
            if let failure {
                // The report is the JSON result: no second (error) object after it.
                if json { printError("opconvert: error: \(failure)"); throw ExitCode(failure.exitStatus.rawValue) }
                throw failure
            }
        }
    }
}

struct PluginBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "GEMM GFLOP/s (square and LoRA shapes) and kernel timings on a plugin.",
        discussion: """
        Each case runs once to warm up, then --repeat times, each followed by a 4-byte \
        download so the time covers the device's work; the median and best are reported. \
        Cases larger than half the device's memory are skipped.
        """
    )
    @OptionGroup var choice: PluginChoice
    @Option(help: "Comma-separated square GEMM sizes.") var sizes = "1024,2048,4096"
    @Option(help: "Comma-separated MxNxK GEMM shapes besides the squares (\"\" for none).") var shapes = "4096x4096x16,16x4096x4096"
    @Option(name: .customLong("repeat"), help: "Timed runs per case.") var repeats = 10
    @Option(help: "Elements of the adamw/axpy/divide cases.") var kernelElements = 16 << 20
    @Option(help: "ROWSxCLASSES of the softmax_xent case.") var softmax = "1024x32000"
    @Flag(help: "Allow TF32 GEMMs (CUDA).") var tf32 = false
    @OptionGroup var common: CommonOptions

    func options() throws -> BenchmarkOptions {
        func ints(_ s: String, _ sep: Character, _ flag: String) throws -> [Int] {
            try s.split(separator: sep, omittingEmptySubsequences: false).map {
                guard let v = Int($0), v > 0 else { throw ValidationError("\(flag): \"\(s)\" needs positive integers") }
                return v
            }
        }
        var o = BenchmarkOptions()
        o.squareSizes = sizes.isEmpty ? [] : try ints(sizes, ",", "--sizes")
        o.loraShapes = try (shapes.isEmpty ? [] : shapes.split(separator: ",")).map { s in
            let d = try ints(String(s), "x", "--shapes")
            guard d.count == 3 else { throw ValidationError("--shapes: \"\(s)\" is not MxNxK") }
            return (d[0], d[1], d[2])
        }
        guard repeats > 0 else { throw ValidationError("--repeat must be a positive integer, not \(repeats)") }
        o.repeats = repeats
        guard kernelElements > 0 else { throw ValidationError("--kernel-elements must be positive") }
        o.kernelElements = kernelElements
        let sm = try ints(softmax, "x", "--softmax")
        guard sm.count == 2 else { throw ValidationError("--softmax: \"\(softmax)\" is not ROWSxCLASSES") }
        o.softmaxShape = (sm[0], sm[1])
        for (m, n, k) in o.squareSizes.map({ ($0, $0, $0) }) + o.loraShapes where [m * k, k * n, m * n].contains(where: { $0 > Int(Int32.max) }) {
            throw ValidationError("GEMM \(m)x\(n)x\(k) exceeds \(Int32.max) elements per matrix")
        }
        return o
    }

    func validate() throws { _ = try options() }

    func run() throws {
        try runReportingErrors(json: common.json) {
            let selected = try DeviceSelection.select(choice.choice, pluginPath: choice.plugin)
            let json = common.json
            if !json { print("\(selected.plugin.name) on \(selected.label)\(tf32 ? ", TF32 allowed" : "")") }
            let r = try PluginBenchmark.run(selected, options: try options(), allowTF32: tf32) { if !json { print($0); fflush(nil) } }
            if json { try printJSON(r) } else { for s in r.skipped { print("skipped (memory): \(s)") } }
        }
    }
}
