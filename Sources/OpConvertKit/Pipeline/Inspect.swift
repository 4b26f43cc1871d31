import Foundation

/// `opconvert inspect`: what a file, index or directory holds. The Codable form is the
/// stable `--json` output (documented in the README; fields are only ever added).
public struct InspectReport: Codable, Sendable {
    public struct Tensor: Codable, Sendable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var bytes: Int
        public var file: String
    }
    public struct File: Codable, Sendable {
        public var name: String
        public var bytes: Int
        public var headerBytes: Int
        public var tensors: Int
    }
    public struct DTypeTotal: Codable, Sendable {
        public var tensors: Int
        public var parameters: Int
        public var bytes: Int
    }
    public struct Totals: Codable, Sendable {
        public var tensors: Int
        public var parameters: Int
        public var bytes: Int
        public var byDType: [String: DTypeTotal]
    }

    /// "safetensors", "sharded", "model", or (later formats) "peft-adapter", "op-checkpoint".
    public var kind: String
    public var path: String
    public var files: [File]
    public var metadata: [String: String]?
    public var tensors: [Tensor]
    public var totals: Totals
    /// Non-weight files of a directory (config, tokenizer, ...).
    public var otherFiles: [String]
    /// Format-specific details (adapter config summary, OP modules, ...).
    public var details: [String: String]?
}

public enum Inspector {
    public static func inspect(_ path: String) throws -> InspectReport {
        let store = try TensorStore.open(path)
        var kind: String
        switch store.layout {
        case .singleFile: kind = FileSystem.isDirectory(path) ? "model" : "safetensors"
        case .sharded: kind = "sharded"
        }
        if FileSystem.isDirectory(path) && store.auxiliaryFiles.contains("config.json") { kind = "model" }
        return report(store: store, kind: kind)
    }

    static func report(store: TensorStore, kind: String) -> InspectReport {
        var byDType: [String: InspectReport.DTypeTotal] = [:]
        var tensors: [InspectReport.Tensor] = []
        var parameters = 0
        for e in store.entries {
            let t = e.info
            tensors.append(.init(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, bytes: t.byteCount,
                                 file: FileSystem.split(store.fileName(e)).name))
            parameters += t.elementCount
            var d = byDType[t.dtype.rawValue] ?? .init(tensors: 0, parameters: 0, bytes: 0)
            d.tensors += 1
            d.parameters += t.elementCount
            d.bytes += t.byteCount
            byDType[t.dtype.rawValue] = d
        }
        let files = store.files.map {
            InspectReport.File(name: FileSystem.split($0.path).name, bytes: $0.mapping.count,
                               headerBytes: $0.header.dataStart, tensors: $0.tensors.count)
        }
        return InspectReport(kind: kind, path: store.path, files: files, metadata: store.metadata, tensors: tensors,
                             totals: .init(tensors: tensors.count, parameters: parameters, bytes: store.totalBytes, byDType: byDType),
                             otherFiles: store.auxiliaryFiles, details: nil)
    }

    /// Human-readable form of a report.
    public static func render(_ r: InspectReport, limit: Int? = nil) -> String {
        var out = "\(r.path): \(r.kind), \(r.files.count) file\(r.files.count == 1 ? "" : "s")\n"
        if let details = r.details, !details.isEmpty {
            for key in details.keys.sorted() { out += "  \(key): \(details[key]!)\n" }
        }
        if let m = r.metadata, !m.isEmpty {
            out += "metadata:\n"
            for k in m.keys.sorted() { out += "  \(k): \(m[k]!)\n" }
        }
        let nameWidth = min(72, r.tensors.map(\.name.count).max() ?? 4)
        let shown = limit.map { Array(r.tensors.prefix($0)) } ?? r.tensors
        out += "tensors:\n"
        for t in shown {
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            out += "  " + t.name.padding(toLength: max(nameWidth, t.name.count), withPad: " ", startingAt: 0)
                + "  " + t.dtype.padding(toLength: 11, withPad: " ", startingAt: 0)
                + shape.padding(toLength: max(16, shape.count), withPad: " ", startingAt: 0)
                + "  " + formatBytes(t.bytes) + (r.files.count > 1 ? "  " + t.file : "") + "\n"
        }
        if shown.count < r.tensors.count { out += "  ... \(r.tensors.count - shown.count) more (use --all)\n" }
        out += "totals: \(r.totals.tensors) tensors, \(r.totals.parameters) parameters, \(formatBytes(r.totals.bytes))\n"
        for k in r.totals.byDType.keys.sorted() {
            let d = r.totals.byDType[k]!
            out += "  \(k): \(d.tensors) tensors, \(d.parameters) parameters, \(formatBytes(d.bytes))\n"
        }
        if !r.otherFiles.isEmpty { out += "other files: \(r.otherFiles.joined(separator: ", "))\n" }
        return out
    }
}
