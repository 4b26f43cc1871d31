import XCTest
@testable import OpConvertKit

final class SafetensorsWriterTests: XCTestCase {
    func testReferenceOrderPaddingAndMetadata() throws {
        let dir = TestPaths.scratch(self)
        let path = dir + "/out.safetensors"
        try SafetensorsWriter.write(path: path, tensors: [
            (TensorSpec(name: "b", dtype: .u8, shape: [3]), [1, 2, 3]),
            (TensorSpec(name: "a", dtype: .u8, shape: [1]), [9]),
            (TensorSpec(name: "z", dtype: .f32, shape: [1]), [Float(1.5)].bytes),
        ], metadata: ["zeta": "1", "format": "pt"])
        let bytes = readBytes(path)
        let n = bytes[0..<8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        XCTAssertEqual(n % 8, 0)
        let header = String(decoding: bytes[8..<(8 + Int(n))], as: UTF8.self)
        XCTAssertEqual(header.trimmingCharacters(in: .whitespaces),
                       #"{"__metadata__":{"format":"pt","zeta":"1"},"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[1],"data_offsets":[4,5]},"b":{"dtype":"U8","shape":[3],"data_offsets":[5,8]}}"#)
        let f = try SafetensorsFile(path: path)
        XCTAssertEqual(Array(f.data(try f.tensor(named: "b"))), [1, 2, 3])
        // Nothing but the output is left in the directory.
        XCTAssertEqual(try FileSystem.list(dir), ["out.safetensors"])
    }

    func testJSONEscapingMatchesSerde() {
        let s = JSONWriter.serialize(.object([("k\"\\/\n\u{01}é", .string("\t\u{7F}ü"))]))
        XCTAssertEqual(s, "{\"k\\\"\\\\/\\n\\u0001é\":\"\\t\u{7F}ü\"}")
        let py = JSONWriter.serialize(.object([("b", .int(1)), ("a", .array([.string("é"), .double(1e-05)]))]), style: .python(indent: 2, sortKeys: true))
        XCTAssertEqual(py, "{\n  \"a\": [\n    \"\\u00e9\",\n    1e-05\n  ],\n  \"b\": 1\n}")
    }

    func testUnfinishedWriterLeavesNothing() throws {
        let dir = TestPaths.scratch(self)
        do {
            let w = try SafetensorsWriter(path: dir + "/x.safetensors", tensors: [TensorSpec(name: "a", dtype: .u8, shape: [2])], metadata: nil)
            try [UInt8(1)].withUnsafeBytes { try w.write($0) }
            XCTAssertThrowsError(try w.finish())
        }
        XCTAssertEqual(try FileSystem.list(dir), [])
    }

    func testShardPlanner() {
        XCTAssertEqual(ShardPlanner.plan(sizes: [4, 4, 4], maxShardSize: 8), [[0, 1], [2]])
        XCTAssertEqual(ShardPlanner.plan(sizes: [2, 20, 2], maxShardSize: 8), [[0], [1], [2]])
        XCTAssertEqual(ShardPlanner.shardNames(prefix: "model", count: 2), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        XCTAssertEqual(parseByteSize("5GB"), 5_000_000_000)
        XCTAssertEqual(parseByteSize("2GiB"), 2 << 30)
        XCTAssertEqual(parseByteSize("500MB"), 500_000_000)
        XCTAssertNil(parseByteSize("lots"))
    }
}
