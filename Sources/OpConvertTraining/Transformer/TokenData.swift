import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// Token rows for causal-LM training: `input_ids`, `labels` and `attention_mask`, each
/// [rows, sequenceLength] row-major, read from safetensors or JSON lines.
///
/// Rules (docs/transformer-training.md):
/// - `attention_mask` is right padding only: 1s then 0s in every row, at least one 1.
/// - Without `labels`, the labels are `input_ids` where the mask is 1 and -100 where it is 0
///   (what transformers' DataCollatorForLanguageModeling makes of padded rows). Labels given
///   are used as given, like transformers' loss does.
/// - Token ids must be in [0, vocab); labels in [0, vocab) or -100.
public struct TokenData: Sendable, Equatable {
    public static let ignoreIndex: Int32 = -100

    public var path: String
    public var rows: Int
    public var sequenceLength: Int
    public var inputIDs: [Int32]
    public var labels: [Int32]
    public var attentionMask: [UInt8]

    /// Labels that enter the loss: position t predicts labels[t + 1], so the first column never counts.
    public var targetCount: Int {
        var n = 0
        for r in 0..<rows {
            for t in 1..<max(sequenceLength, 1) where labels[r * sequenceLength + t] != Self.ignoreIndex { n += 1 }
        }
        return n
    }

    /// Reads `.jsonl` (one JSON object a line) or safetensors, checking ids against `vocabSize`.
    public static func read(_ path: String, vocabSize: Int) throws -> TokenData {
        guard FileSystem.exists(path) else {
            throw InputError.notFound(path: path, expected: "token data: a .safetensors file with input_ids, or a .jsonl file")
        }
        guard FileSystem.isRegularFile(path) else {
            throw InputError.wrongKind(path: path, problem: "\(InputKind.of(path).phrase), expected a token data file")
        }
        let data = path.hasSuffix(".jsonl") ? try readJSONLines(path) : try readSafetensors(path)
        try data.validate(vocabSize: vocabSize)
        return data
    }

    // MARK: safetensors

    static func readSafetensors(_ path: String) throws -> TokenData {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.open(path) } catch let error as SafetensorsError {
            throw InputCheck.notSafetensors(path, error: error) ?? error
        }
        guard let ids = file.header.tensor(named: "input_ids") else {
            let names = file.tensors.prefix(5).map(\.name).joined(separator: ", ")
            throw TransformerError.invalidData(path: path, reason: "no tensor input_ids (found: \(names.isEmpty ? "no tensors" : names))")
        }
        guard ids.shape.count == 2, ids.shape[0] > 0, ids.shape[1] > 0 else {
            throw TransformerError.invalidData(path: path, reason: "input_ids has shape \(ids.shape), expected [rows, sequence length] with both > 0")
        }
        let idValues = try integers(file, ids, allowed: [.i64, .i32], path: path)
        var labels: [Int64]?
        var mask: [Int64]?
        for (name, allowed) in [("labels", [DType.i64, .i32]), ("attention_mask", [DType.i64, .i32, .i8, .u8, .bool])] {
            guard let t = file.header.tensor(named: name) else { continue }
            guard t.shape == ids.shape else {
                throw TransformerError.invalidData(path: path, reason: "\(name) has shape \(t.shape), input_ids has \(ids.shape)")
            }
            let v = try integers(file, t, allowed: allowed, path: path)
            if name == "labels" { labels = v } else { mask = v }
        }
        return try assemble(path: path, rows: ids.shape[0], length: ids.shape[1], ids: idValues, labels: labels, mask: mask)
    }

    private static func integers(_ file: SafetensorsFile, _ t: TensorInfo, allowed: [DType], path: String) throws -> [Int64] {
        guard allowed.contains(t.dtype) else {
            throw TransformerError.invalidData(path: path, reason: "\(t.name) has dtype \(t.dtype.rawValue), expected \(allowed.map(\.rawValue).joined(separator: " or "))")
        }
        let raw = file.data(t)
        let n = t.elementCount
        switch t.dtype {
        case .i64: return (0..<n).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
        case .i32: return (0..<n).map { Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self))) }
        case .i8: return (0..<n).map { Int64(Int8(bitPattern: raw[$0])) }
        default: return (0..<n).map { Int64(raw[$0]) }  // U8, BOOL
        }
    }

    // MARK: JSON lines

    static func readJSONLines(_ path: String) throws -> TokenData {
        let bytes = try FileSystem.readAll(path)
        var rowsIDs: [[Int64]] = [], rowsLabels: [[Int64]?] = [], rowsMask: [[Int64]?] = []
        var lineNumber = 0
        for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            let where_ = "line \(lineNumber)"
            let value: JSONValue
            do { value = try JSONParser.parse(Array(line)) } catch {
                throw TransformerError.invalidData(path: path, reason: "\(where_): not valid JSON: \(error.message)")
            }
            guard case .object = value else {
                throw TransformerError.invalidData(path: path, reason: "\(where_): expected a JSON object with input_ids, found a JSON \(value.typeName)")
            }
            func array(_ key: String) throws -> [Int64]? {
                guard let v = value[key], v != .null else { return nil }
                guard let items = v.arrayValue else {
                    throw TransformerError.invalidData(path: path, reason: "\(where_): \(key) must be an array of integers, not a JSON \(v.typeName)")
                }
                return try items.enumerated().map { i, item in
                    guard case let .int(x) = item else {
                        throw TransformerError.invalidData(path: path, reason: "\(where_): \(key)[\(i)] must be an integer, not a JSON \(item.typeName)")
                    }
                    return x
                }
            }
            guard let ids = try array("input_ids") else {
                throw TransformerError.invalidData(path: path, reason: "\(where_): no input_ids")
            }
            guard !ids.isEmpty else { throw TransformerError.invalidData(path: path, reason: "\(where_): input_ids is empty") }
            let labels = try array("labels"), mask = try array("attention_mask")
            for (key, a) in [("labels", labels), ("attention_mask", mask)] {
                if let a, a.count != ids.count {
                    throw TransformerError.invalidData(path: path, reason: "\(where_): \(key) has \(a.count) values, input_ids has \(ids.count)")
                }
            }
            rowsIDs.append(ids)
            rowsLabels.append(labels)
            rowsMask.append(mask)
        }
        guard !rowsIDs.isEmpty else { throw TransformerError.invalidData(path: path, reason: "no rows (every line is empty)") }
        // Right-pad to the longest row: pad id 0, mask 0, label -100.
        let length = rowsIDs.map(\.count).max()!
        var ids: [Int64] = [], labels: [Int64] = [], mask: [Int64] = []
        let anyLabels = rowsLabels.contains { $0 != nil }
        for r in rowsIDs.indices {
            let pad = length - rowsIDs[r].count
            let m = (rowsMask[r] ?? Array(repeating: 1, count: rowsIDs[r].count)) + Array(repeating: 0, count: pad)
            ids += rowsIDs[r] + Array(repeating: 0, count: pad)
            mask += m
            if anyLabels {
                let own = rowsLabels[r] ?? zip(rowsIDs[r], m).map { $1 == 0 ? Int64(ignoreIndex) : $0 }
                labels += own + Array(repeating: Int64(ignoreIndex), count: pad)
            }
        }
        return try assemble(path: path, rows: rowsIDs.count, length: length, ids: ids, labels: anyLabels ? labels : nil, mask: mask,
                            rowName: { "row \($0) (line \(lineOfRow(bytes, $0)))" })
    }

    /// The 1-based line of the r-th non-blank line, for messages.
    private static func lineOfRow(_ bytes: [UInt8], _ row: Int) -> Int {
        var seen = -1
        for (i, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            seen += 1
            if seen == row { return i + 1 }
        }
        return 0
    }

    // MARK: checks

    private static func assemble(path: String, rows: Int, length: Int, ids: [Int64], labels: [Int64]?, mask: [Int64]?,
                                 rowName: (Int) -> String = { "row \($0)" }) throws -> TokenData {
        func check(_ value: Int64, _ ok: Bool, _ what: String, _ i: Int) throws {
            guard ok else {
                throw TransformerError.invalidData(path: path, reason: "\(what) at \(rowName(i / length)), column \(i % length) is \(value)")
            }
        }
        var maskBytes = [UInt8](repeating: 1, count: rows * length)
        if let mask {
            for (i, m) in mask.enumerated() {
                try check(m, m == 0 || m == 1, "attention_mask (must be 0 or 1)", i)
                maskBytes[i] = UInt8(m)
            }
            for r in 0..<rows {
                let row = maskBytes[(r * length)..<((r + 1) * length)]
                guard row.first == 1 else {
                    throw TransformerError.invalidData(path: path, reason: "attention_mask of \(rowName(r)) starts with 0: only right padding is supported (every row must start with a real token)")
                }
                if let firstPad = row.firstIndex(of: 0), let later = row[firstPad...].firstIndex(of: 1) {
                    throw TransformerError.invalidData(path: path, reason: "attention_mask of \(rowName(r)) has a 1 at column \(later - r * length) after a 0 at column \(firstPad - r * length): only right padding is supported")
                }
            }
        }
        var id32 = [Int32](repeating: 0, count: rows * length)
        for (i, v) in ids.enumerated() {
            // The range against the vocabulary is checked by validate(vocabSize:).
            try check(v, v >= 0 && v <= Int64(Int32.max), "input_ids", i)
            id32[i] = Int32(v)
        }
        var label32: [Int32]
        if let labels {
            label32 = [Int32](repeating: 0, count: rows * length)
            for (i, v) in labels.enumerated() {
                try check(v, v == Int64(ignoreIndex) || (v >= 0 && v <= Int64(Int32.max)), "labels (must be -100 or a token id)", i)
                label32[i] = Int32(v)
            }
        } else {
            label32 = zip(id32, maskBytes).map { $1 == 0 ? ignoreIndex : $0 }
        }
        return TokenData(path: path, rows: rows, sequenceLength: length, inputIDs: id32, labels: label32, attentionMask: maskBytes)
    }

    func validate(vocabSize: Int) throws(TransformerError) {
        for (what, values) in [("input_ids", inputIDs), ("labels", labels)] {
            for (i, v) in values.enumerated() where v != Self.ignoreIndex || what == "input_ids" {
                if v < 0 || Int(v) >= vocabSize {
                    throw .invalidData(path: path, reason: "\(what) at row \(i / sequenceLength), column \(i % sequenceLength) is \(v), outside the vocabulary [0, \(vocabSize))")
                }
            }
        }
        guard targetCount > 0 else {
            throw .invalidData(path: path, reason: "no label to predict: every label after the first column is -100 (the loss would be 0/0)")
        }
    }
}

/// The loss transformers' causal LMs compute (`ForCausalLMLoss`): logits at position t are
/// scored against labels[t + 1]; the mean of -log softmax over every target that is not -100.
public enum TokenCrossEntropy {
    /// f64 reference for tests: `logits` is [rows, sequenceLength, vocab] row-major.
    public static func reference<T: BinaryFloatingPoint>(logits: [T], data: TokenData, vocabSize: Int) -> Double {
        var total = 0.0
        var count = 0
        let t = data.sequenceLength
        for r in 0..<data.rows {
            for p in 0..<(t - 1) {
                let label = data.labels[r * t + p + 1]
                if label == TokenData.ignoreIndex { continue }
                let base = (r * t + p) * vocabSize
                var maxValue = -Double.infinity
                for v in 0..<vocabSize { maxValue = max(maxValue, Double(logits[base + v])) }
                var sum = 0.0
                for v in 0..<vocabSize { sum += Foundation.exp(Double(logits[base + v]) - maxValue) }
                total += maxValue + Foundation.log(sum) - Double(logits[base + Int(label)])
                count += 1
            }
        }
        return total / Double(count)
    }
}
