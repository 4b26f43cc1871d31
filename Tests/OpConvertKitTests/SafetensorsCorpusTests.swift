import Foundation
import XCTest
@testable import OpConvertKit

/// The reference corpus made by fixtures/scripts/make_safetensors_fixtures.py with the real
/// safetensors package: every malformed case is refused or accepted as the reference does
/// (except duplicate keys, which we refuse), and every valid file reads back exactly and
/// is re-written byte for byte.
final class SafetensorsCorpusTests: XCTestCase {
    private func manifest(_ dir: String) throws -> [[String: Any]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("safetensors/\(dir)/manifest.json")))
        return try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
    }

    func testMalformedCorpusMatchesReference() throws {
        let cases = try manifest("malformed")
        XCTAssertGreaterThan(cases.count, 100)
        var failures: [String] = []
        for c in cases {
            let file = c["file"] as! String
            let path = TestPaths.fixture("safetensors/malformed/\(file)")
            let expect = c["expect"] as! String
            do {
                let f = try SafetensorsFile(path: path)
                for t in f.tensors { _ = f.data(t) }
                if expect == "reject" { failures.append("\(file): accepted, reference: \(c["reference_error"] as? String ?? "-")") }
            } catch {
                let message = "\(error)"
                if expect == "accept" {
                    failures.append("\(file): rejected (\(message))")
                    continue
                }
                if !message.contains(path) { failures.append("\(file): error does not name the file: \(message)") }
                var names = [String]()
                if let t = c["tensor"] as? String { names = [t] }
                if let any = c["tensor_any_of"] as? [String] { names = any }
                if !names.isEmpty && !names.contains(where: { message.contains("\"\($0)\"") }) {
                    failures.append("\(file): error does not name tensor \(names): \(message)")
                }
            }
        }
        XCTAssertTrue(failures.isEmpty, "\(failures.count) cases differ:\n" + failures.joined(separator: "\n"))
    }

    func testValidFilesReadExactlyAndRewriteByteForByte() throws {
        let scratch = TestPaths.scratch(self)
        for c in try manifest("valid") {
            let file = c["file"] as! String
            let path = TestPaths.fixture("safetensors/valid/\(file)")
            let f = try SafetensorsFile(path: path)
            let tensors = c["tensors"] as! [[String: Any]]
            XCTAssertEqual(f.tensors.map(\.name), tensors.map { $0["name"] as! String }, file)
            for (t, e) in zip(f.tensors, tensors) {
                XCTAssertEqual(t.dtype.rawValue, e["dtype"] as? String, "\(file):\(t.name)")
                XCTAssertEqual(t.shape, e["shape"] as? [Int], "\(file):\(t.name)")
                XCTAssertEqual([t.dataOffsets.lowerBound, t.dataOffsets.upperBound], e["data_offsets"] as? [Int], "\(file):\(t.name)")
                XCTAssertEqual(sha256Hex(f.data(t)), e["sha256"] as? String, "\(file):\(t.name)")
            }
            XCTAssertEqual(f.metadata, c["metadata"] as? [String: String], file)
            // Re-write with our writer: same bytes as the Python package wrote.
            let out = scratch + "/" + file
            let writer = try SafetensorsWriter(path: out, tensors: f.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                               metadata: f.metadata)
            for spec in writer.layout.order { try writer.write(f.data(try f.tensor(named: spec.name))) }
            try writer.finish(sync: false)
            XCTAssertEqual(readBytes(out), readBytes(path), "\(file): re-written bytes differ from the reference writer's")
        }
    }
}
