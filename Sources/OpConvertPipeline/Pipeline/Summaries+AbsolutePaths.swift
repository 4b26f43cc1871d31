import OpConvertCore
import Foundation

// The JSON contract (README "JSON output") names every path absolutely and prints the same
// keys for every input: summaries keep the paths as given until the CLI asks for this form.

extension FileSystem {
    /// The paths of an output's files: names inside a directory output joined onto it,
    /// a file output's own path made absolute.
    package static func absoluteFiles(_ files: [String], output: String) -> [String] {
        let root = absolute(output)
        return files.map { f in
            if f.hasPrefix("/") { return f }
            return isDirectory(root) && f != output ? join(root, f) : absolute(f)
        }
    }
}

extension MergeSummary {
    public func contractForm() -> MergeSummary {
        var s = self
        s.base = FileSystem.absolute(base)
        s.output = FileSystem.absolute(output)
        s.files = FileSystem.absoluteFiles(files, output: output)
        for i in s.adapters.indices { s.adapters[i].path = FileSystem.absolute(s.adapters[i].path) }
        return s
    }
}

extension ConvertSummary {
    public func contractForm() -> ConvertSummary {
        var s = self
        s.input = FileSystem.absolute(input)
        s.output = FileSystem.absolute(output)
        s.files = FileSystem.absoluteFiles(files, output: output)
        return s
    }
}

extension MaterializeSummary {
    public func contractForm() -> MaterializeSummary {
        var s = self
        s.checkpoint = FileSystem.absolute(checkpoint)
        s.output = FileSystem.absolute(output)
        return s
    }
}

extension InspectReport {
    /// `path` absolute; files and tensors keep their file names (each is inside `path`,
    /// or is `path` itself); metadata, details and modules empty rather than absent.
    public func contractForm() -> InspectReport {
        var r = self
        r.path = FileSystem.absolute(path)
        r.metadata = metadata ?? [:]
        r.details = details ?? [:]
        r.modules = modules ?? []
        r.totals.fileBytes = files.reduce(0) { $0 + $1.bytes }
        return r
    }
}
