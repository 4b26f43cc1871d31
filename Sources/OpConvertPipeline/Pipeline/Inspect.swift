import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
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
        /// With --verify: NaN/Inf elements (float tensors).
        public var nonFinite: Int?
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
        public var byDtype: [String: DTypeTotal]
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
    /// Adapted modules of an adapter or OP checkpoint.
    public var modules: [Module]?

    public struct Module: Codable, Sendable {
        public var name: String
        public var rank: Int
        /// OP checkpoints: hypernetwork parameters (the paper's "Train Par.").
        public var trainParameters: Int?
        /// Parameters once materialized: A, B (and m) (the paper's "Inf. Par.").
        public var inferenceParameters: Int
    }
}

public enum Inspector {
    /// Reads every byte of every tensor (checking that the data is really there and
    /// readable) and counts NaN/Inf values of float tensors. Returns seconds and bytes read.
    public static func verify(_ report: inout InspectReport, path: String) throws -> (seconds: Double, bytes: Int) {
        if GGUFFile.hasMagic(path) { return try verifyGGUF(&report, path: path) }
        let store = try TensorStore.open(weightsPath(path))
        let started = Date()
        var total = 0, bad = 0
        var counts: [String: Int] = [:]
        for f in store.files { f.mapping.adviseSequential() }
        for e in store.entries {
            let n = TensorScan.nonFinite(store.data(e), e.info.dtype, count: e.info.elementCount)
            counts[e.info.name] = n
            bad += n ?? 0
            total += e.info.byteCount
            store.files[e.file].release(e.info)
        }
        // A file truncated under the scan read as zeros: say so rather than "all finite".
        for f in store.files { try f.mapping.checkIntact() }
        let seconds = Date().timeIntervalSince(started)
        for i in report.tensors.indices { report.tensors[i].nonFinite = counts[report.tensors[i].name] }
        var d = report.details ?? [:]
        d["verified"] = "\(report.tensors.count) tensors, \(formatBytes(total)) read in \(String(format: "%.3f", seconds)) s (\(formatBytes(Int(Double(total) / max(seconds, 1e-9))))/s), \(bad) NaN/Inf values"
        report.details = d
        return (seconds, total)
    }

    /// After `verify`: the NaN/Inf values it found, as an error (exit 65), or nil when
    /// every float tensor is finite.
    public static func nonFiniteError(_ report: InspectReport) -> NonFiniteValuesError? {
        let bad = report.tensors.filter { ($0.nonFinite ?? 0) > 0 }
        guard let first = bad.first else { return nil }
        return NonFiniteValuesError(path: report.path, values: bad.reduce(0) { $0 + $1.nonFinite! }, tensors: bad.count,
                                    firstTensor: first.name, firstCount: first.nonFinite!)
    }

    /// The weights file of an adapter or OP checkpoint directory; other paths as given.
    static func weightsPath(_ path: String) -> String {
        guard let format = AdapterRegistry.format(of: path) else { return path }
        switch format.id {
        case .op: return OPCheckpoint.weightsFile(in: path) ?? path
        case .peft: return FileSystem.join(path, PEFTFormat.weightsName)
        default: return (try? format.summarize(path, options: AdapterOpenOptions()))?.weightsFile ?? path
        }
    }

    public static func inspect(_ path: String, keyMap: String? = nil) throws -> InspectReport {
        if let format = AdapterRegistry.format(of: path) {
            let map = try keyMap.map { try KeyMap(path: $0) }
            let summary = try format.summarize(path, options: AdapterOpenOptions(keyMap: map))
            var r: InspectReport
            if let tensors = summary.tensors {
                r = report(tensors: tensors, file: FileSystem.split(path).name, fileBytes: (try? FileSystem.fileSize(path)) ?? 0, kind: summary.kind)
            } else {
                r = report(store: try TensorStore.open(summary.weightsFile ?? path), kind: summary.kind)
            }
            r.path = path
            r.details = summary.details.isEmpty ? nil : summary.details
            r.modules = summary.modules.isEmpty && summary.details["suggestion"] != nil ? nil : summary.modules.map {
                .init(name: $0.name, rank: $0.rank, trainParameters: $0.trainParameters, inferenceParameters: $0.inferenceParameters)
            }
            return r
        }
        let store = try TensorStore.open(path)
        var kind: String
        switch store.layout {
        case .singleFile: kind = FileSystem.isDirectory(path) ? "model" : "safetensors"
        case .sharded: kind = "sharded"
        case .components: kind = "pipeline"
        }
        if FileSystem.isDirectory(path) && store.auxiliaryFiles.contains("config.json") { kind = "model" }
        return report(store: store, kind: kind)
    }

    /// A report of tensors from a container that is not safetensors (GGUF).
    static func report(tensors infos: [TensorInfo], file: String, fileBytes: Int, kind: String) -> InspectReport {
        let tensors = infos.map {
            InspectReport.Tensor(name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, bytes: $0.byteCount, file: file, nonFinite: nil)
        }
        let bytes = infos.reduce(0) { $0 + $1.byteCount }
        return InspectReport(kind: kind, path: file, files: [.init(name: file, bytes: fileBytes, headerBytes: max(0, fileBytes - bytes), tensors: tensors.count)],
                             metadata: nil, tensors: tensors, totals: totals(infos, bytes: bytes),
                             otherFiles: [], details: nil, modules: nil)
    }

    /// Tensor, parameter and byte counts, overall and per dtype.
    static func totals(_ infos: [TensorInfo], bytes: Int) -> InspectReport.Totals {
        var byDType: [String: InspectReport.DTypeTotal] = [:]
        var parameters = 0
        for t in infos {
            parameters += t.elementCount
            var d = byDType[t.dtype.rawValue] ?? .init(tensors: 0, parameters: 0, bytes: 0)
            d.tensors += 1
            d.parameters += t.elementCount
            d.bytes += t.byteCount
            byDType[t.dtype.rawValue] = d
        }
        return .init(tensors: infos.count, parameters: parameters, bytes: bytes, byDtype: byDType)
    }

    static func report(store: TensorStore, kind: String) -> InspectReport {
        // A pipeline's files are named by component (unet/..., vae/... share file names).
        let fileNames = store.files.map { f in
            store.layout == .components && f.path.hasPrefix(store.directory + "/") ? String(f.path.dropFirst(store.directory.count + 1)) : FileSystem.split(f.path).name
        }
        let tensors = store.entries.map { e in
            InspectReport.Tensor(name: e.info.name, dtype: e.info.dtype.rawValue, shape: e.info.shape, bytes: e.info.byteCount,
                                 file: fileNames[e.file], nonFinite: nil)
        }
        let files = zip(store.files, fileNames).map { f, name in
            InspectReport.File(name: name, bytes: f.mapping.count, headerBytes: f.header.dataStart, tensors: f.tensors.count)
        }
        return InspectReport(kind: kind, path: store.path, files: files, metadata: store.metadata, tensors: tensors,
                             totals: totals(store.entries.map(\.info), bytes: store.totalBytes),
                             otherFiles: store.auxiliaryFiles, details: nil, modules: nil)
    }

    /// Human-readable form of a report. Names and metadata from the file are shown with
    /// control characters escaped (they could rewrite the terminal); shapes of more than
    /// `shownDims` dimensions are shortened (a header may hold one of 50M).
    public static func render(_ r: InspectReport, limit: Int? = nil) -> String {
        var out = "\(r.path.displayEscaped): \(r.kind), \(r.files.count) file\(r.files.count == 1 ? "" : "s")\n"
        if let details = r.details, !details.isEmpty {
            for key in details.keys.sorted() { out += "  \(key): \(details[key]!.displayEscaped)\n" }
        }
        if let modules = r.modules, !modules.isEmpty {
            out += "modules:\n"
            for m in modules.prefix(limit ?? modules.count) {
                out += "  \(m.name.displayEscaped)  r=\(m.rank)" + (m.trainParameters.map { "  train \($0)" } ?? "") + "  inference \(m.inferenceParameters)\n"
            }
            if let limit, modules.count > limit { out += "  ... \(modules.count - limit) more (use --all)\n" }
        }
        if let m = r.metadata, !m.isEmpty {
            // Appended piece by piece into reserved space: a value may be 100 MB.
            let lines = m.keys.sorted().map { ($0.displayEscaped, m[$0]!.displayEscaped) }
            out.reserveCapacity(lines.reduce(out.utf8.count + 4096) { $0 + $1.0.utf8.count + $1.1.utf8.count + 5 }
                                + 160 * min(r.tensors.count, limit ?? r.tensors.count))
            out += "metadata:\n"
            for (k, v) in lines {
                out += "  "; out += k; out += ": "; out += v; out += "\n"
            }
        }
        let shown = limit.map { r.tensors.prefix($0) } ?? r.tensors[...]
        let names = shown.map { $0.name.displayEscaped }
        let nameWidth = min(72, names.map(\.count).max() ?? 4)
        out += "tensors:\n"
        for (t, name) in zip(shown, names) {
            let shape = shapeText(t.shape)
            out += "  " + name.padding(toLength: max(nameWidth, name.count), withPad: " ", startingAt: 0)
                + "  " + t.dtype.padding(toLength: 11, withPad: " ", startingAt: 0)
                + shape.padding(toLength: max(16, shape.count), withPad: " ", startingAt: 0)
                + "  " + formatBytes(t.bytes) + (r.files.count > 1 ? "  " + t.file.displayEscaped : "")
                + ((t.nonFinite ?? 0) > 0 ? "  \(t.nonFinite!) NaN/Inf" : "") + "\n"
        }
        if shown.count < r.tensors.count { out += "  ... \(r.tensors.count - shown.count) more (use --all)\n" }
        out += "totals: \(r.totals.tensors) tensors, \(r.totals.parameters) parameters, \(formatBytes(r.totals.bytes))\n"
        for k in r.totals.byDtype.keys.sorted() {
            let d = r.totals.byDtype[k]!
            out += "  \(k): \(d.tensors) tensors, \(d.parameters) parameters, \(formatBytes(d.bytes))\n"
        }
        if !r.otherFiles.isEmpty { out += "other files: \(r.otherFiles.map(\.displayEscaped).joined(separator: ", "))\n" }
        return out
    }

    static let shownDims = 16

    /// "[4096, 11008]"; past `shownDims` dimensions the first and last few and the count.
    static func shapeText(_ shape: [Int]) -> String {
        guard shape.count > shownDims else { return "[" + shape.map(String.init).joined(separator: ", ") + "]" }
        let head = shape.prefix(shownDims / 2).map(String.init), tail = shape.suffix(2).map(String.init)
        return "[" + (head + ["..."] + tail).joined(separator: ", ") + "] (\(shape.count) dims)"
    }
}

/// `inspect --verify` found NaN or Inf values: the data is malformed for most uses.
public struct NonFiniteValuesError: CategorizedError, Sendable, Equatable {
    public var path: String
    public var values: Int
    public var tensors: Int
    public var firstTensor: String
    public var firstCount: Int
    public var category: ErrorCategory { .malformedInput }
    public var description: String {
        "\(path): \(values) NaN/Inf value\(values == 1 ? "" : "s") in \(tensors) tensor\(tensors == 1 ? "" : "s"), first in tensor \"\(firstTensor)\" (\(firstCount))"
    }
}
