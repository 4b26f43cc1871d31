import XCTest
@testable import OpConvertKit

/// Token data (`--data`) in safetensors and JSON lines, the default labels, every refusal,
/// and the causal-LM loss against transformers' own number.
final class TokenDataTests: XCTestCase {
    static let vocab = 96
    static let rowLengths = [16, 16, 12, 16, 9, 16, 14, 16]  // fixtures/llama/cases.json

    func fixture(_ name: String) -> String { TestPaths.fixture("llama/data/" + name) }

    func testFixtureSafetensors() throws {
        let d = try TokenData.read(fixture("train.safetensors"), vocabSize: Self.vocab)
        XCTAssertEqual(d.rows, 8)
        XCTAssertEqual(d.sequenceLength, 16)
        for (r, n) in Self.rowLengths.enumerated() {
            XCTAssertEqual(Array(d.attentionMask[(r * 16)..<((r + 1) * 16)]), Array(repeating: 1, count: n) + Array(repeating: 0, count: 16 - n))
            for t in n..<16 {
                XCTAssertEqual(d.inputIDs[r * 16 + t], 0)
                XCTAssertEqual(d.labels[r * 16 + t], -100)
            }
        }
        XCTAssertEqual(Array(d.labels[16..<20]), [-100, -100, -100, -100], "row 1's prompt is masked")
        XCTAssertEqual(d.targetCount, 102)
    }

    func testJSONLinesEqualSafetensors() throws {
        let s = try TokenData.read(fixture("train.safetensors"), vocabSize: Self.vocab)
        var j = try TokenData.read(fixture("train.jsonl"), vocabSize: Self.vocab)
        j.path = s.path
        XCTAssertEqual(j, s)
    }

    func testDefaultLabelsAreInputIDsWithPaddingIgnored() throws {
        let given = try TokenData.read(fixture("train.safetensors"), vocabSize: Self.vocab)
        let d = try TokenData.read(fixture("train_i32_nolabels.safetensors"), vocabSize: Self.vocab)
        XCTAssertEqual(d.inputIDs, given.inputIDs, "int32 ids read like int64")
        XCTAssertEqual(d.attentionMask, given.attentionMask)
        for i in d.labels.indices {
            XCTAssertEqual(d.labels[i], d.attentionMask[i] == 1 ? d.inputIDs[i] : -100)
            // the given labels differ only where a prompt was masked (rows 1 and 5)
            if d.labels[i] != given.labels[i] { XCTAssertTrue([1, 5].contains(i / 16), "position \(i)") }
        }
        XCTAssertEqual(d.targetCount, 102 + 3 + 2)  // row 1: columns 1-3 back in; row 5: columns 1-2
    }

    // MARK: safetensors refusals

    func int64Bytes(_ v: [Int64]) -> [UInt8] { v.withUnsafeBytes { [UInt8]($0) } }

    func write(_ tensors: [(String, DType, [Int], [UInt8])]) throws -> String {
        let path = TestPaths.scratch(self) + "/data.safetensors"
        try SafetensorsWriter.write(path: path, tensors: tensors.map { (TensorSpec(name: $0.0, dtype: $0.1, shape: $0.2), $0.3) }, metadata: nil)
        return path
    }

    func assertRefused(_ path: String, status: ExitStatus = .dataError, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try TokenData.read(path, vocabSize: Self.vocab), file: file, line: line) { error in
            XCTAssertEqual(ExitStatus.of(error), status, "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".hasPrefix(path), "\(error)", file: file, line: line)
            for m in mentions { XCTAssertTrue("\(error)".contains(m), "\(error) does not mention \(m)", file: file, line: line) }
        }
    }

    func testSafetensorsRefusals() throws {
        let ids: [Int64] = [5, 6, 7, 8, 9, 10]
        let ok = try write([("input_ids", .i64, [2, 3], int64Bytes(ids))])
        XCTAssertEqual(try TokenData.read(ok, vocabSize: Self.vocab).labels, [5, 6, 7, 8, 9, 10].map(Int32.init))

        assertRefused(try write([("tokens", .i64, [2, 3], int64Bytes(ids))]), mentions: ["no tensor input_ids", "tokens"])
        assertRefused(try write([("input_ids", .f32, [2, 3], [Float](repeating: 1, count: 6).bytes)]), mentions: ["input_ids", "F32"])
        assertRefused(try write([("input_ids", .i64, [6], int64Bytes(ids))]), mentions: ["input_ids", "[6]"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes([5, 6, 7, 8, 96, 10]))]),
                      mentions: ["input_ids at row 1, column 1 is 96", "[0, 96)"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes([5, 6, -1, 8, 9, 10]))]), mentions: ["input_ids at row 0, column 2 is -1"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("labels", .i64, [3, 2], int64Bytes(ids))]),
                      mentions: ["labels has shape [3, 2]"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("labels", .i64, [2, 3], int64Bytes([5, 6, 7, 8, -5, 10]))]),
                      mentions: ["labels", "row 1, column 1 is -5"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("labels", .i64, [2, 3], int64Bytes([5, 6, 7, 8, 9, 200]))]),
                      mentions: ["labels at row 1, column 2 is 200"])
        // a hole in the mask (0 then 1): left or middle padding
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("attention_mask", .i64, [2, 3], int64Bytes([1, 1, 1, 1, 0, 1]))]),
                      mentions: ["attention_mask of row 1", "column 2", "right padding"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("attention_mask", .i64, [2, 3], int64Bytes([1, 1, 1, 0, 1, 1]))]),
                      mentions: ["attention_mask of row 1 starts with 0"])
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("attention_mask", .i64, [2, 3], int64Bytes([1, 1, 2, 1, 1, 1]))]),
                      mentions: ["attention_mask", "row 0, column 2 is 2"])
        // nothing to predict
        assertRefused(try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("labels", .i64, [2, 3], int64Bytes([5, -100, -100, 8, -100, -100]))]),
                      mentions: ["no label to predict"])
        // a bool mask is accepted, as its 0/1 bytes
        let boolMask = try write([("input_ids", .i64, [2, 3], int64Bytes(ids)), ("attention_mask", .bool, [2, 3], [1, 1, 0, 1, 1, 1])])
        XCTAssertEqual(try TokenData.read(boolMask, vocabSize: Self.vocab).labels, [5, 6, -100, 8, 9, 10])
    }

    func testMissingAndNonTokenFiles() throws {
        let dir = TestPaths.scratch(self)
        assertRefused(dir + "/absent.safetensors", status: .noInput, mentions: ["does not exist"])
        assertRefused(dir, mentions: ["expected a token data file"])
        writeFile(dir + "/text.safetensors", Array("hello".utf8))
        XCTAssertThrowsError(try TokenData.read(dir + "/text.safetensors", vocabSize: Self.vocab)) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertTrue("\(error)".contains("text.safetensors"), "\(error)")
        }
    }

    // MARK: JSON lines

    func writeLines(_ text: String) -> String {
        let path = TestPaths.scratch(self) + "/data.jsonl"
        writeFile(path, Array(text.utf8))
        return path
    }

    func testJSONLinesPaddingAndLabels() throws {
        let d = try TokenData.read(writeLines("{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n"), vocabSize: Self.vocab)
        XCTAssertEqual(d.rows, 2)
        XCTAssertEqual(d.sequenceLength, 3)
        XCTAssertEqual(d.inputIDs, [1, 2, 3, 4, 5, 0])
        XCTAssertEqual(d.attentionMask, [1, 1, 1, 1, 1, 0])
        XCTAssertEqual(d.labels, [1, 2, 3, -100, 5, -100])
        // without any labels: the defaults, padding ignored
        let n = try TokenData.read(writeLines("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5], \"attention_mask\": [1, 0]}"), vocabSize: Self.vocab)
        XCTAssertEqual(n.labels, [1, 2, 3, 4, -100, -100])
    }

    func testJSONLinesRefusalsNameTheLine() throws {
        assertRefused(writeLines("{\"input_ids\": [1, 2]}\n{\"ids\": [1, 2]}\n"), mentions: ["line 2", "no input_ids"])
        assertRefused(writeLines("{\"input_ids\": [1, 2]}\n[1, 2]\n"), mentions: ["line 2", "JSON object"])
        assertRefused(writeLines("{\"input_ids\": [1, 2.5]}\n"), mentions: ["line 1", "input_ids[1] must be an integer"])
        assertRefused(writeLines("{\"input_ids\": [1, 2], \"labels\": [1]}\n"), mentions: ["line 1", "labels has 1 values"])
        assertRefused(writeLines("{\"input_ids\": [1, 2]\n"), mentions: ["line 1", "not valid JSON"])
        assertRefused(writeLines("{\"input_ids\": []}\n"), mentions: ["line 1", "empty"])
        assertRefused(writeLines("\n\n"), mentions: ["no rows"])
        assertRefused(writeLines("{\"input_ids\": [1, 2]}\n\n{\"input_ids\": [1, 2], \"attention_mask\": [0, 1]}\n"),
                      mentions: ["row 1 (line 3)", "right padding"])
        assertRefused(writeLines("{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 99]}\n"), mentions: ["input_ids at row 1, column 1 is 99"])
    }

    // MARK: loss

    /// The f64 token cross-entropy of transformers' logits equals the loss transformers reported.
    func testCrossEntropyReferenceMatchesTransformersLoss() throws {
        let data = try TokenData.read(fixture("train.safetensors"), vocabSize: Self.vocab)
        for model in ["llama", "mistral", "qwen2"] {
            let base = try SafetensorsFile(path: TestPaths.fixture("llama/expected/\(model)/base.safetensors"))
            let t = try base.tensor(named: "logits")
            XCTAssertEqual(t.shape, [8, 16, 96])
            let raw = base.data(t)
            let logits = (0..<t.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
            let expected = try JSONParser.parse(readBytes(TestPaths.fixture("llama/expected/\(model)/base.json")))["loss_f64_from_logits"]!.doubleValue!
            let got = TokenCrossEntropy.reference(logits: logits, data: data, vocabSize: Self.vocab)
            XCTAssertEqual(got, expected, accuracy: 1e-12 * expected, model)
        }
    }
}
