import ArgumentParser
import Foundation
import OpConvertKit

/// Flags every command shares.
struct CommonOptions: ParsableArguments {
    @Flag(help: "Print a machine-readable JSON result on stdout (stable field names).")
    var json = false

    @Flag(name: .long, help: "Never draw the progress bar (it is drawn only when stderr is a terminal).")
    var noProgress = false

    @Flag(name: .customLong("progress"), help: "Draw the progress bar even when stderr is not a terminal.")
    var forceProgress = false

    var progress: Bool? { noProgress ? false : (forceProgress ? true : nil) }
}

/// Where results go.
struct OutputOptions: ParsableArguments {
    @Option(name: [.short, .customLong("output")], help: "Output path.", completion: .file())
    var output: String

    @Flag(help: "Replace OUTPUT if it exists (it is swapped in only once the new one is complete).")
    var overwrite = false
}

extension FloatDType: ExpressibleByArgument {
    public init?(argument: String) { self.init(lenient: argument) }
    public static var allValueStrings: [String] { ["f32", "bf16", "f16"] }
}

/// A byte size such as 5GB, 500MB or 2GiB.
extension AdapterFormatID: ExpressibleByArgument {}

struct ByteSize: ExpressibleByArgument {
    var bytes: Int
    init?(argument: String) {
        guard let b = parseByteSize(argument) else { return nil }
        bytes = b
    }
    init(bytes: Int) { self.bytes = bytes }
    var defaultValueDescription: String { "5GB" }
}

/// Runs a command body, turning thrown errors into a one-line message on stderr, an
/// optional JSON error object on stdout, and the documented exit code.
func runReportingErrors(json: Bool, _ body: () throws -> Void) throws {
    do {
        try body()
        // What the library said outside any command's own collector (e.g. training's outputs).
        if !json { printWarnings(Warnings.takeUnbound()) }
    } catch let error as ExitCode {
        throw error
    } catch let error as Interrupted {
        // The work has unwound (each unfinished output removed its temporary): finish up.
        if json { printJSONError(message: "\(error)", exitCode: 128 + error.signal) }
        Interrupts.finish(error.signal)
    } catch {
        let status = ExitStatus.of(error)
        // One line, whatever names it quotes (control characters shown escaped).
        let message = "\(error)".displayEscaped
        if !json { printWarnings(Warnings.takeUnbound()) }
        FileHandle.standardError.write(Data("opconvert: error: \(message)\n".utf8))
        if json { printJSONError(message: message, exitCode: status.rawValue) }
        throw ExitCode(status.rawValue)
    }
}

/// Warnings on stderr, one line each.
func printWarnings(_ warnings: [String]) {
    for w in warnings { printError("opconvert: warning: \(w.displayEscaped)") }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
