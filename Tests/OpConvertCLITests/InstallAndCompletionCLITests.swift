import Foundation
import XCTest
@testable import OpConvertKit

/// The installed layout (PREFIX/bin/opconvert with PREFIX/lib/opconvert/ plugins) and the
/// shell completions the argument declarations generate.
final class InstallAndCompletionCLITests: XCTestCase {
    /// A run of `binary` with `environment` replacing the whole environment.
    func run(_ binary: String, _ args: [String], environment: [String: String]) throws -> CLIRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.environment = environment
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self), killedBySignal: false)
    }

    /// The built binary copied to PREFIX/bin, its CPU plugin to PREFIX/lib/opconvert when `plugin`.
    func installedCopy(plugin: Bool) throws -> (prefix: String, binary: String) {
        let prefix = cliScratch() + "/prefix"
        let fm = FileManager.default
        try fm.createDirectory(atPath: prefix + "/bin", withIntermediateDirectories: true)
        try fm.copyItem(atPath: CLITests.binary, toPath: prefix + "/bin/opconvert")
        if plugin {
            let built = (CLITests.binary as NSString).deletingLastPathComponent + "/" + KernelPlugin.defaultLibraryName
            try fm.createDirectory(atPath: prefix + "/lib/opconvert", withIntermediateDirectories: true)
            try fm.copyItem(atPath: built, toPath: prefix + "/lib/opconvert/" + KernelPlugin.defaultLibraryName)
        }
        return (prefix, prefix + "/bin/opconvert")
    }

    var plainEnvironment: [String: String] {
        var env = ["PATH": "/usr/bin:/bin"]
        if let home = ProcessInfo.processInfo.environment["HOME"] { env["HOME"] = home }
        return env
    }

    func testInstalledBinaryFindsItsPluginInLibOpconvert() throws {
        let (prefix, binary) = try installedCopy(plugin: true)
        let check = try run(binary, ["plugin", "check", "--device", "cpu"], environment: plainEnvironment)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        let list = try run(binary, ["plugin", "list", "--json"], environment: plainEnvironment)
        XCTAssertEqual(list.status, 0, list.stderr)
        XCTAssertTrue(list.stdout.contains(prefix + "/lib/opconvert/" + KernelPlugin.defaultLibraryName), list.stdout)
        // A merge from the installed copy: run-time loading needs nothing from the build tree.
        let out = cliScratch() + "/merged"
        let merge = try run(binary, ["merge", "fixtures/peft/models/llama", "fixtures/peft/adapters/llama_lora", "-o", out],
                            environment: plainEnvironment)
        XCTAssertEqual(merge.status, 0, merge.stderr)
    }

    func testMissingPluginSaysWhereItLookedAndPluginPathIsSearched() throws {
        let (prefix, binary) = try installedCopy(plugin: false)
        let missing = try run(binary, ["plugin", "check", "--device", "cpu"], environment: plainEnvironment)
        XCTAssertEqual(missing.status, 66, missing.stderr)
        XCTAssertTrue(missing.stderr.contains(prefix + "/bin") && missing.stderr.contains(prefix + "/lib/opconvert"), missing.stderr)
        XCTAssertTrue(missing.stderr.contains(KernelPlugin.searchOrderDescription), missing.stderr)
        XCTAssertEqual(missing.stderr.split(separator: "\n").count, 1, missing.stderr)
        // $OPCONVERT_PLUGIN_PATH, searched last, finds the build directory's plugin.
        var env = plainEnvironment
        env[KernelPlugin.pluginPathVariable] = "/nonexistent-dir:" + (CLITests.binary as NSString).deletingLastPathComponent
        let found = try run(binary, ["plugin", "check", "--device", "cpu"], environment: env)
        XCTAssertEqual(found.status, 0, found.stderr)
    }

    func testBashCompletionCompletesFilesForMergeBase() throws {
        let r = try runOpconvert(["--generate-completion-script", "bash"])
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let start = r.stdout.range(of: "_opconvert_merge() {") else { return XCTFail("no merge function:\n\(r.stdout.prefix(400))") }
        let body = String(r.stdout[start.upperBound...]).components(separatedBy: "\n}\n")[0]
        guard let positional = body.range(of: "case \"${positional_number}\" in") else { return XCTFail("merge offers no positional completion:\n\(body)") }
        let cases = String(body[positional.upperBound...])
        XCTAssertTrue(cases.contains("1)\n        __opconvert_add_completions -f"), "BASE (positional 1) completes files:\n\(cases)")
        XCTAssertTrue(body.contains("'--key-map')\n        __opconvert_add_completions -o plusdirs -fX '!*.@(json)'"), body)
        XCTAssertTrue(body.contains("'-o'|'--output')\n        __opconvert_add_completions -f"), body)
    }

    func testZshAndFishCompletionsCompleteFiles() throws {
        let zsh = try runOpconvert(["--generate-completion-script", "zsh"])
        XCTAssertEqual(zsh.status, 0, zsh.stderr)
        XCTAssertTrue(zsh.stdout.hasPrefix("#compdef opconvert"), String(zsh.stdout.prefix(80)))
        XCTAssertTrue(zsh.stdout.contains(":base:_files"), "zsh: merge BASE completes files")
        let fish = try runOpconvert(["--generate-completion-script", "fish"])
        XCTAssertEqual(fish.status, 0, fish.stderr)
        XCTAssertTrue(fish.stdout.contains("opconvert"), String(fish.stdout.prefix(200)))
        XCTAssertTrue(fish.stdout.contains("-l 'sweep-dir'") && fish.stdout.contains("-rfa '(__opconvert_complete_directories)'"), "fish: --sweep-dir completes directories")
    }
}
