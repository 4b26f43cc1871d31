import XCTest
@testable import OpConvertKit

/// Rules of the reader checked on hand-made files (the reference corpus in
/// fixtures/safetensors is checked by SafetensorsCorpusTests).
final class SafetensorsReaderTests: XCTestCase {
    private func open(_ bytes: [UInt8]) throws -> SafetensorsFile {
        let path = TestPaths.scratch(self) + "/t.safetensors"
        writeFile(path, bytes)
        return try SafetensorsFile(path: path)
    }

    private func expectError(_ bytes: [UInt8], contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try open(bytes), file: file, line: line) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains(text), "\"\(message)\" does not contain \"\(text)\"", file: file, line: line)
            XCTAssertTrue(message.contains("t.safetensors"), "error does not name the file: \(message)", file: file, line: line)
        }
    }

    func testReadsTensorsZeroCopy() throws {
        let a: [Float] = [1, 2, 3, 4]
        let f = try open(rawSafetensors(
            header: #"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}}"#,
            data: a.bytes + [7, 8, 9]))
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(f.tensors.map(\.name), ["a", "b"])
        let t = try f.tensor(named: "a")
        XCTAssertEqual(t.shape, [2, 2])
        XCTAssertEqual(Array(f.data(t)), a.bytes)
        XCTAssertEqual(Array(f.data(try f.tensor(named: "b"))), [7, 8, 9])
        // The view points into the mapping, not a copy.
        XCTAssertEqual(f.data(t).baseAddress, f.mapping.bytes.baseAddress! + f.header.dataStart)
    }

    func testHeaderLengthRules() {
        expectError([1, 2, 3], contains: "too small")
        expectError(rawSafetensors(header: "{}", declaredLength: 100_000_001), contains: "exceeds the limit")
        expectError(rawSafetensors(header: "{}", declaredLength: 50), contains: "past the end")
    }

    func testJSONRules() {
        expectError(rawSafetensors(header: "{\"a\":"), contains: "not valid JSON")
        expectError(rawSafetensors(header: "[]"), contains: "not an object")
        expectError(rawSafetensors(header: "{} {}"), contains: "not valid JSON")
        expectError(rawSafetensors(header: "{}\0\0"), contains: "not valid JSON")
        expectError([4, 0, 0, 0, 0, 0, 0, 0, 0x7B, 0xFF, 0xFE, 0x7D], contains: "UTF-8")
        expectError(rawSafetensors(header: #"{"__metadata__":{"a":1}}"#), contains: "only strings")
    }

    func testDuplicateKeysAreRejected() {
        expectError(rawSafetensors(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [1]),
                    contains: "duplicate key \"a\"")
        expectError(rawSafetensors(header: #"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [1]),
                    contains: "duplicate key \"dtype\"")
        expectError(rawSafetensors(header: #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"\u0061":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [1]),
                    contains: "duplicate key")
    }

    func testEntryRules() {
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), contains: "unknown dtype \"F33\"")
        expectError(rawSafetensors(header: #"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), contains: "unknown dtype")
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), contains: "\"w\"")
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), contains: "\"w\"")
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, data: [0, 0, 0, 0]), contains: "expected 2")
        expectError(rawSafetensors(header: #"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), contains: "missing field \"dtype\"")
    }

    func testLayoutRules() {
        let four: [UInt8] = [0, 0, 0, 0]
        // Gap before the first tensor.
        expectError(rawSafetensors(header: #"{"w":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}"#, data: four + [0]), contains: "gap")
        // Overlap.
        expectError(rawSafetensors(header: #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#, data: four),
                    contains: "overlap")
        // Size mismatch.
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: four), contains: "need 8")
        // Trailing and missing bytes.
        expectError(rawSafetensors(header: #"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#, data: four + [1]), contains: "trailing")
        expectError(rawSafetensors(header: #"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#, data: [0, 0]), contains: "data buffer is 2 bytes")
        // Overflowing shape.
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, data: four), contains: "overflows")
        // F4 with an odd element count is not a whole number of bytes.
        expectError(rawSafetensors(header: #"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, data: [0, 0]), contains: "whole number of bytes")
    }

    func testZeroSizedScalarAndSubByteTensors() throws {
        let f = try open(rawSafetensors(
            header: #"{"e1":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"e2":{"dtype":"F16","shape":[0],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"q":{"dtype":"F4","shape":[4],"data_offsets":[4,6]}}"#,
            data: [0, 0, 128, 63, 0x21, 0x43]))
        XCTAssertEqual(try f.tensor(named: "s").shape, [])
        XCTAssertEqual(try f.tensor(named: "q").byteCount, 2)
        XCTAssertEqual(try f.tensor(named: "e1").byteCount, 0)
        XCTAssertNil(f.metadata)
    }

    func testMetadataNullAndWhitespacePadding() throws {
        let f = try open(rawSafetensors(header: #"{"__metadata__":null,"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}   "#, data: [5]))
        XCTAssertNil(f.metadata)
        XCTAssertEqual(f.tensors.count, 1)
    }
}

final class VerifyTests: XCTestCase {
    func testVerifyReadsAllDataAndCountsNonFinite() throws {
        let path = TestPaths.scratch(self) + "/v.safetensors"
        let values: [Float] = [1, .nan, 3, .infinity, -.infinity, 0] + (0..<70_000).map { Float($0) }
        let half: [UInt16] = [0x3C00, 0x7C00, 0xFE00, 0x0001]   // 1, +Inf, NaN, subnormal
        try SafetensorsWriter.write(path: path, tensors: [
            (TensorSpec(name: "f", dtype: .f32, shape: [values.count]), values.bytes),
            (TensorSpec(name: "h", dtype: .f16, shape: [4]), half.withUnsafeBytes { [UInt8]($0) }),
            (TensorSpec(name: "i", dtype: .i32, shape: [2]), [1, 0, 0, 0, 2, 0, 0, 0]),
        ], metadata: nil)
        var report = try Inspector.inspect(path)
        let (_, bytes) = try Inspector.verify(&report, path: path)
        XCTAssertEqual(bytes, values.count * 4 + 8 + 8)
        XCTAssertEqual(report.tensors.first { $0.name == "f" }?.nonFinite, 3)
        XCTAssertEqual(report.tensors.first { $0.name == "h" }?.nonFinite, 2)
        XCTAssertNil(report.tensors.first { $0.name == "i" }?.nonFinite)
        XCTAssertTrue(report.details?["verified"]?.contains("5 NaN/Inf") == true)
    }
}
