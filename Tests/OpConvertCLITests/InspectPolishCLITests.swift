import Foundation
import XCTest
@testable import OpConvertKit

/// inspect's text: shards listed by name, aligned columns, sizes labelled as tensor data
/// or files, and datasets counted in elements.
final class InspectPolishCLITests: XCTestCase {
    func inspect(_ path: String) throws -> String {
        let r = try runOpconvert(["inspect", path, "--all"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout
    }

    func section(_ text: String, _ title: String) -> [Substring] {
        let lines = text.split(separator: "\n")
        guard let start = lines.firstIndex(of: Substring(title + ":")) else { return [] }
        return Array(lines[(start + 1)...].prefix { $0.hasPrefix("  ") })
    }

    func testShardedModelListsEachShardWithBothSizes() throws {
        let out = cliScratch() + "/sharded"
        XCTAssertEqual(try runOpconvert(["convert", "fixtures/peft/models/llama_f32", "-o", out, "--max-shard-size", "100KB"]).status, 0)
        let text = try inspect(out)
        let files = section(text, "files")
        XCTAssertEqual(files.count, 5, text)
        XCTAssertEqual(files.first?.split(separator: " ").map(String.init), ["file", "tensors", "tensor", "data", "file", "size"])
        let report = try Inspector.inspect(out)
        for (line, f) in zip(files.dropFirst(), report.files) {
            let cells = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            XCTAssertEqual(cells.first, f.name)
            XCTAssertEqual(cells[1], "\(f.tensors)")
            XCTAssertEqual(cells.suffix(2).joined(separator: " "), formatBytes(f.bytes), "the file's size last")
            XCTAssertTrue(line.hasSuffix(formatBytes(f.bytes)))
        }
        XCTAssertEqual(Set(files.dropFirst().map(\.count)).count, 1, "right-aligned columns end together: \(files)")
        let fileBytes = report.files.reduce(0) { $0 + $1.bytes }
        XCTAssertTrue(text.contains("totals: 29 tensors, 99136 parameters, \(formatBytes(report.totals.bytes)) of tensor data (\(formatBytes(fileBytes)) in 4 files)"), text)
        XCTAssertGreaterThan(fileBytes, report.totals.bytes, "headers are counted in file sizes only")
    }

    func testTensorColumnsAreAligned() throws {
        let text = try inspect("fixtures/peft/models/llama_f32")
        let rows = section(text, "tensors")
        XCTAssertEqual(rows.count, 30, "a header and 29 tensors")
        // Each column starts at the same offset on every row, the bytes column ends at one.
        func start(of cell: Substring, in row: Substring) -> Int { row.distance(from: row.startIndex, to: row.range(of: " " + cell + " ")!.lowerBound) }
        let dtypeColumn = Set(rows.dropFirst().map { row in start(of: "F32", in: row) })
        XCTAssertEqual(dtypeColumn.count, 1, "\(rows)")
        XCTAssertEqual(Set(rows.map(\.count)).count, 1, "no file column: every row ends with its right-aligned bytes")
        XCTAssertFalse(rows.contains { $0.hasSuffix(" ") })
    }

    func testDatasetsCountElements() throws {
        let path = cliScratch() + "/data.safetensors"
        try SafetensorsWriter.write(path: path, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [4, 3]), [UInt8](repeating: 0, count: 48)),
            (TensorSpec(name: "labels", dtype: .i64, shape: [4]), [UInt8](repeating: 0, count: 32)),
        ], metadata: nil)
        let text = try inspect(path)
        XCTAssertTrue(text.contains("totals: 2 tensors, 16 elements, 80 B of tensor data"), text)
        XCTAssertFalse(text.contains("parameters"), text)
        XCTAssertTrue(try inspect("fixtures/peft/models/llama_f32").contains("99136 parameters"))
    }
}
