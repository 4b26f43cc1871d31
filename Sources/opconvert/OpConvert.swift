import ArgumentParser
import OpConvertKit

@main
struct OpConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opconvert",
        abstract: "Materialize, merge and convert low-rank adapters and model weights.",
        discussion: """
        Exit status: 0 success; 64 bad command line; 65 malformed or inconsistent input; \
        66 input missing; 69 unsupported variant; 73 output exists or would replace an input; \
        74 read/write failure; 1 internal error. Errors are one line on stderr; with --json \
        a JSON object {"ok": false, "error": ..., "exit_code": ..., "category": ...} is also printed on stdout \
        (every --json result is one line: docs/schema/opconvert-result.schema.json).
        """,
        version: OpConvertVersion.string,
        subcommands: [Inspect.self, Convert.self, Merge.self, Materialize.self, Train.self, Plugin.self,
                      Extract.self, Resize.self, Combine.self, Verify.self, Batch.self]
    )

    static func main() {
        Interrupts.install()
        let json = CommandLine.arguments.dropFirst().contains("--json")
        var command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // Usage errors keep the JSON contract too (help and --version are not errors).
            let code = exitCode(for: error)
            if json && code != .success {
                printJSONError(message: message(for: error), exitCode: code.rawValue)
            }
            exit(withError: error)
        }
        do {
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
