import OpConvertCore
import Foundation

/// `model.safetensors.index.json`: which shard holds each tensor.
public struct ShardIndex: Sendable {
    public var path: String
    /// Tensor name -> shard file name, in the index file's order.
    public var weightMap: [(tensor: String, shard: String)]
    /// The index's "metadata" object (total_size and whatever else the writer put there).
    public var metadata: JSONValue

    /// Shard file names in first-appearance order.
    public var shards: [String] {
        var seen = Set<String>()
        return weightMap.compactMap { seen.insert($0.shard).inserted ? $0.shard : nil }
    }

    public static func read(path: String) throws(SafetensorsError) -> ShardIndex {
        let root: JSONValue
        do {
            let bytes = try FileSystem.readAll(path)
            root = try JSONParser.parse(bytes)
        } catch let error as IOError {
            throw .io(error)
        } catch let error as JSONParseError {
            throw .invalidIndex(file: path, reason: "not valid JSON: \(error.message)")
        } catch {
            throw .invalidIndex(file: path, reason: "\(error)")
        }
        guard case .object = root else { throw .invalidIndex(file: path, reason: "top level is not an object") }
        guard let map = root["weight_map"]?.objectValue else {
            throw .invalidIndex(file: path, reason: "missing \"weight_map\" object")
        }
        var entries: [(String, String)] = []
        for (tensor, value) in map {
            guard let shard = value.stringValue else {
                throw .invalidIndex(file: path, reason: "weight_map[\"\(tensor)\"] is a \(value.typeName), expected a file name")
            }
            try validateShardName(shard, index: path)
            entries.append((tensor, shard))
        }
        return ShardIndex(path: path, weightMap: entries, metadata: root["metadata"] ?? .object([]))
    }

    /// Shard names must be plain file names in the index's directory.
    static func validateShardName(_ name: String, index: String) throws(SafetensorsError) {
        if name.isEmpty || name == "." || name == ".." || name.contains("/") || name.contains("\\") || name.contains("\0") {
            throw .invalidIndex(file: index, reason: "shard name \"\(name)\" is not a plain file name in the model directory (path traversal refused)")
        }
    }

    /// The index JSON as transformers writes it: sorted keys, 2-space indent, final newline.
    public static func render(weightMap: [String: String], totalSize: Int, extraMetadata: [(String, JSONValue)] = []) -> String {
        var meta = extraMetadata.filter { $0.0 != "total_size" }
        meta.append(("total_size", .int(Int64(totalSize))))
        let root: JSONValue = .object([
            ("metadata", .object(meta)),
            ("weight_map", .object(weightMap.map { ($0.key, .string($0.value)) })),
        ])
        return JSONWriter.serialize(root, style: .python(indent: 2, sortKeys: true)) + "\n"
    }
}

/// Splits tensors into shards the way transformers does: in order, starting a new shard
/// when the next tensor would push the current one past the limit; a tensor larger than
/// the limit gets a shard of its own.
public enum ShardPlanner {
    public static func plan(sizes: [Int], maxShardSize: Int) -> [[Int]] {
        var shards: [[Int]] = []
        var current: [Int] = []
        var currentSize = 0
        for (i, size) in sizes.enumerated() {
            if !current.isEmpty && currentSize + size > maxShardSize {
                shards.append(current)
                current = []
                currentSize = 0
            }
            current.append(i)
            currentSize += size
        }
        if !current.isEmpty || shards.isEmpty { shards.append(current) }
        return shards
    }

    /// transformers' shard file names: model-00001-of-00003.safetensors; a single shard is
    /// model.safetensors.
    public static func shardNames(prefix: String, count: Int) -> [String] {
        if count == 1 { return ["\(prefix).safetensors"] }
        func pad(_ n: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, 5 - s.count)) + s
        }
        return (1...count).map { "\(prefix)-\(pad($0))-of-\(pad(count)).safetensors" }
    }
}

/// Byte sizes as users write them: "5GB" (decimal, as transformers), "500MB", "2GiB", "1000".
/// Nil for anything that is not a positive size of at most `maxByteSize` (zero, negative,
/// not a number, or so large it would overflow), so callers can refuse it as a usage error.
public func parseByteSize(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces).uppercased()
    let units: [(String, Int)] = [("TIB", 1 << 40), ("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10),
                                  ("TB", 1_000_000_000_000), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000), ("B", 1)]
    let (number, factor): (String, Int) = units.first(where: { t.hasSuffix($0.0) }).map {
        (String(t.dropLast($0.0.count)).trimmingCharacters(in: .whitespaces), $0.1)
    } ?? (t, 1)
    let bytes: Int
    if let whole = Int(number) {
        let (product, overflow) = whole.multipliedReportingOverflow(by: factor)
        guard !overflow else { return nil }
        bytes = product
    } else if number.allSatisfy({ $0.isNumber || $0 == "." || $0 == "E" || $0 == "+" || $0 == "-" }), let v = Double(number), v.isFinite {
        // Checked in Double before converting: Int(v) traps when v is out of range.
        let product = v * Double(factor)
        guard product.rounded() <= Double(maxByteSize) else { return nil }
        bytes = Int(product.rounded())
    } else {
        return nil
    }
    guard bytes > 0, bytes <= maxByteSize else { return nil }
    return bytes
}

/// The largest size `parseByteSize` accepts (1 PiB): more is a typo, not a shard size.
public let maxByteSize = 1 << 50
