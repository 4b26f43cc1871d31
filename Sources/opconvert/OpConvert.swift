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
        a JSON object {"ok": false, "error": ..., "exit_code": ...} is also printed on stdout.
        """,
        version: OpConvertVersion.string,
        subcommands: [Inspect.self, Convert.self, Merge.self, Materialize.self, Train.self]
    )

    static func main() {
        TemporaryPaths.removeOnInterrupt()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
