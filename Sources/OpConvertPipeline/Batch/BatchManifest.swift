import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// One line of a batch manifest: `{"op": "merge", "args": {...}, "output": "out/x"}`.
public struct BatchJobLine: Sendable {
    /// 1-based line number in the manifest.
    public var line: Int
    public var op: String
    /// The output path, resolved against the manifest's directory.
    public var output: String
    /// `args` as written (members in document order).
    public var args: [(String, JSONValue)]
}

/// A manifest problem, always naming the manifest and line (exit 65; an unreadable
/// manifest is the underlying I/O error instead).
public struct BatchManifestError: CategorizedError, Sendable {
    public var manifest: String
    /// 1-based; 0 for problems of the whole manifest.
    public var line: Int
    public var message: String
    public var category: ErrorCategory

    public init(manifest: String, line: Int, _ message: String, category: ErrorCategory = .malformedInput) {
        self.manifest = manifest
        self.line = line
        self.message = message
        self.category = category
    }

    public var description: String {
        line > 0 ? "\(manifest):\(line): \(message)" : "\(manifest): \(message)"
    }
}

/// JSON-lines batch manifests. Blank lines and lines starting with `#` are skipped (they
/// still count for line numbers). Relative paths in `args` and `output` are taken from the
/// manifest's directory, so a manifest and its data can move together and every shard of a
/// cluster job reads them alike, whatever its working directory.
public enum BatchManifest {
    static let topLevelKeys = ["op", "args", "output"]

    public static func read(_ path: String) throws -> [BatchJobLine] {
        let bytes = try FileSystem.readAll(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw BatchManifestError(manifest: path, line: 0, "not UTF-8 text")
        }
        let directory = FileSystem.split(FileSystem.absolute(path)).directory
        return try parse(text, manifest: path, baseDirectory: directory)
    }

    public static func parse(_ text: String, manifest: String, baseDirectory: String) throws -> [BatchJobLine] {
        var jobs: [BatchJobLine] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = i + 1
            let trimmed = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            func fail(_ message: String) -> BatchManifestError { BatchManifestError(manifest: manifest, line: line, message) }
            let value: JSONValue
            do { value = try JSONParser.parse(trimmed) } catch {
                throw fail("not a JSON object (\(error)); give one job per line")
            }
            guard let members = value.objectValue else { throw fail("a job is a JSON object, not \(value.typeName)") }
            var seen = Set<String>()
            for (key, _) in members {
                guard topLevelKeys.contains(key) else {
                    throw fail("unknown key \"\(key.displayEscaped)\" (a job has \"op\", \"args\" and \"output\")")
                }
                guard seen.insert(key).inserted else { throw fail("key \"\(key)\" given twice") }
            }
            guard let op = value["op"]?.stringValue else { throw fail("missing \"op\" (a string such as \"merge\")") }
            guard let output = value["output"]?.stringValue, !output.isEmpty else {
                throw fail("missing \"output\" (the path the job writes)")
            }
            let args: [(String, JSONValue)]
            switch value["args"] {
            case nil: args = []
            case let .object(m)?: args = m
            case let other?: throw fail("\"args\" is an object, not \(other.typeName)")
            }
            jobs.append(BatchJobLine(line: line, op: op, output: resolve(output, against: baseDirectory), args: args))
        }
        if jobs.isEmpty { throw BatchManifestError(manifest: manifest, line: 0, "no jobs (one JSON object per line)") }
        return jobs
    }

    static func resolve(_ path: String, against directory: String) -> String {
        path.hasPrefix("/") ? path : FileSystem.join(directory, path)
    }
}

/// Reads a job's `args` into a command's options: typed getters that name the line and key
/// on a bad value, and `finish()` refusing keys nothing read (a typo is an error, not a
/// silently ignored option). Keys are the CLI's option names with `_` for `-`
/// (`max_shard_size`, `key_map`).
public struct BatchArgs {
    public let manifest: String
    public let line: Int
    public let op: String
    let baseDirectory: String
    private var members: [(String, JSONValue)]
    private var used = Set<String>()

    init(job: BatchJobLine, manifest: String, baseDirectory: String) throws {
        self.manifest = manifest
        line = job.line
        op = job.op
        self.baseDirectory = baseDirectory
        members = job.args
        var seen = Set<String>()
        for (key, _) in members where !seen.insert(key).inserted {
            throw BatchManifestError(manifest: manifest, line: line, "\(op): args key \"\(key.displayEscaped)\" given twice")
        }
    }

    public func error(_ message: String) -> BatchManifestError {
        BatchManifestError(manifest: manifest, line: line, "\(op): \(message)")
    }

    private mutating func value(_ key: String) -> JSONValue? {
        used.insert(key)
        guard let v = members.first(where: { $0.0 == key })?.1 else { return nil }
        if case .null = v { return nil }
        return v
    }

    public mutating func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.stringValue else { throw error("\"\(key)\" is a string, not \(v.typeName)") }
        return s
    }

    public mutating func requiredString(_ key: String) throws -> String {
        guard let s = try string(key) else { throw error("missing \"\(key)\" in args") }
        return s
    }

    /// A path, resolved against the manifest's directory.
    public mutating func path(_ key: String) throws -> String? {
        guard let s = try string(key) else { return nil }
        guard !s.isEmpty else { throw error("\"\(key)\" is an empty path") }
        return resolvePath(s)
    }

    public mutating func requiredPath(_ key: String) throws -> String {
        guard let p = try path(key) else { throw error("missing \"\(key)\" in args") }
        return p
    }

    public func resolvePath(_ s: String) -> String { BatchManifest.resolve(s, against: baseDirectory) }

    public mutating func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.boolValue else { throw error("\"\(key)\" is true or false, not \(v.typeName)") }
        return b
    }

    public mutating func double(_ key: String) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard let d = v.doubleValue, d.isFinite else { throw error("\"\(key)\" is a finite number, not \(v.typeName)") }
        return d
    }

    /// `"5GB"`, `"2GiB"` or a number of bytes.
    public mutating func byteSize(_ key: String) throws -> Int? {
        guard let v = value(key) else { return nil }
        if let n = v.intValue, n > 0, n <= maxByteSize { return n }
        if let s = v.stringValue, let n = parseByteSize(s) { return n }
        throw error("\"\(key)\" is a size such as \"5GB\", \"500MB\" or \"2GiB\"")
    }

    public mutating func floatDType(_ key: String) throws -> FloatDType? {
        guard let s = try string(key) else { return nil }
        guard let d = FloatDType(lenient: s) else { throw error("\"\(key)\" is f32, bf16 or f16, not \"\(s.displayEscaped)\"") }
        return d
    }

    public mutating func adapterFormat(_ key: String) throws -> AdapterFormatID? {
        guard let s = try string(key) else { return nil }
        guard let f = AdapterFormatID(rawValue: s) else {
            throw error("\"\(key)\" is one of \(AdapterFormatID.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(s.displayEscaped)\"")
        }
        return f
    }

    /// The raw value of a key with a structure of its own (merge's `adapters`).
    public mutating func raw(_ key: String) -> JSONValue? { value(key) }

    /// Refuses keys no getter asked for.
    public func finish() throws {
        if let unknown = members.first(where: { !used.contains($0.0) }) {
            let known = used.sorted().joined(separator: ", ")
            throw error("unknown args key \"\(unknown.0.displayEscaped)\" (\(op) takes \(known))")
        }
    }
}
