import Foundation
import XCTest
@testable import OpConvertKit

/// Sharded models: the index's rules, shard planning and the directory as one tensor set.
final class ShardedModelTests: XCTestCase {
    /// Writes a 3-shard model directory with ModelWriter and returns its path.
    func makeModel(_ dir: String) throws -> String {
        let out = dir + "/model"
        let specs = (0..<6).map { TensorSpec(name: "layer.\($0).weight", dtype: .f32, shape: [10, 10]) }
        var writer = ModelWriter(target: .directory(out, maxShardSize: 900), tensors: specs, metadata: ["format": "pt"], overwrite: false)
        writer.extraFiles = [(nil, "config.json", Array("{\"dtype\": \"float32\"}".utf8))]
        _ = try writer.write { spec, sink in
            let i = Int(spec.name.split(separator: ".")[1])!
            let values = (0..<100).map { Float(i * 100 + $0) }
            try values.withUnsafeBytes { try sink.write($0) }
        }
        return out
    }

    func index(_ model: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/model.safetensors.index.json"))) as! [String: Any]
    }

    func writeIndex(_ model: String, _ obj: [String: Any]) throws {
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: model + "/model.safetensors.index.json"))
    }

    func testWritesTransformersLayoutAndReadsBack() throws {
        let model = try makeModel(TestPaths.scratch(self))
        XCTAssertEqual(try FileSystem.list(model), ["config.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                                    "model-00003-of-00003.safetensors", "model.safetensors.index.json"])
        let idx = try index(model)
        XCTAssertEqual((idx["metadata"] as! [String: Any])["total_size"] as? Int, 6 * 400)
        let store = try TensorStore.open(model)
        XCTAssertEqual(store.tensorCount, 6)
        XCTAssertEqual(store.auxiliaryFiles, ["config.json"])
        let t = store.entry(named: "layer.4.weight")!
        XCTAssertEqual(try TensorData.stored(store, t).floats()[7], 407)
        // Opening the index file itself gives the same set.
        XCTAssertEqual(try TensorStore.open(model + "/model.safetensors.index.json").tensorCount, 6)
        // Index text is what transformers writes: sorted keys, 2-space indent, newline.
        let text = String(decoding: readBytes(model + "/model.safetensors.index.json"), as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("{\n  \"metadata\": {\n    \"total_size\": 2400\n  },\n  \"weight_map\": {\n    \"layer.0.weight\": \"model-00001-of-00003.safetensors\""), text)
        XCTAssertTrue(text.hasSuffix("}\n"))
    }

    func testIndexErrors() throws {
        let model = try makeModel(TestPaths.scratch(self))
        let good = try index(model)
        func expect(_ mutate: (inout [String: Any]) -> Void, _ text: String, line: UInt = #line) throws {
            var obj = good
            mutate(&obj)
            try writeIndex(model, obj)
            XCTAssertThrowsError(try TensorStore.open(model), line: line) { error in
                XCTAssertTrue("\(error)".contains(text), "\(error)", line: line)
                XCTAssertTrue("\(error)".contains("model.safetensors.index.json"), "\(error)", line: line)
            }
        }
        for bad in ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x.safetensors"] {
            try expect({ o in var m = o["weight_map"] as! [String: String]; m["layer.0.weight"] = bad; o["weight_map"] = m }, "path traversal")
        }
        try expect({ o in var m = o["weight_map"] as! [String: String]; m["layer.0.weight"] = "model-00009-of-00009.safetensors"; o["weight_map"] = m }, "does not exist")
        try expect({ o in var m = o["weight_map"] as! [String: String]; m["ghost.weight"] = "model-00001-of-00003.safetensors"; o["weight_map"] = m }, "does not contain it")
        try expect({ o in var m = o["weight_map"] as! [String: String]; m.removeValue(forKey: "layer.5.weight"); o["weight_map"] = m }, "not listed")
        try expect({ o in o.removeValue(forKey: "weight_map") }, "weight_map")
        // A tensor listed twice (duplicate JSON key).
        let dup = "{\"weight_map\": {\"layer.0.weight\": \"model-00001-of-00003.safetensors\", \"layer.0.weight\": \"model-00002-of-00003.safetensors\"}}"
        try Data(dup.utf8).write(to: URL(fileURLWithPath: model + "/model.safetensors.index.json"))
        XCTAssertThrowsError(try TensorStore.open(model)) { XCTAssertTrue("\($0)".contains("duplicate key \"layer.0.weight\""), "\($0)") }
    }

    func testTensorInTwoShardsIsRefused() throws {
        let dir = TestPaths.scratch(self)
        let model = dir + "/m"
        try FileSystem.makeDirectory(model)
        for shard in ["a.safetensors", "b.safetensors"] {
            try SafetensorsWriter.write(path: model + "/" + shard, tensors: [(TensorSpec(name: "w", dtype: .u8, shape: [1]), [1])], metadata: nil)
        }
        try Data("{\"weight_map\": {\"w\": \"a.safetensors\", \"x\": \"b.safetensors\"}}".utf8).write(to: URL(fileURLWithPath: model + "/model.safetensors.index.json"))
        XCTAssertThrowsError(try TensorStore.open(model)) { error in
            XCTAssertTrue("\(error)".contains("\"w\"") || "\(error)".contains("x"), "\(error)")
        }
    }

    func testLargeTensorGetsItsOwnShardAndSingleShardIsPlainFile() throws {
        let dir = TestPaths.scratch(self)
        let specs = [TensorSpec(name: "small", dtype: .u8, shape: [10]), TensorSpec(name: "big", dtype: .u8, shape: [5000]), TensorSpec(name: "tail", dtype: .u8, shape: [10])]
        let w = ModelWriter(target: .directory(dir + "/o", maxShardSize: 1000), tensors: specs, metadata: nil, overwrite: false)
        let r = try w.write { spec, sink in try [UInt8](repeating: 7, count: spec.byteCount).withUnsafeBytes { try sink.write($0) } }
        XCTAssertEqual(r.files.count, 4)
        let one = ModelWriter(target: .directory(dir + "/p", maxShardSize: 1_000_000), tensors: specs, metadata: nil, overwrite: false)
        _ = try one.write { spec, sink in try [UInt8](repeating: 7, count: spec.byteCount).withUnsafeBytes { try sink.write($0) } }
        XCTAssertEqual(try FileSystem.list(dir + "/p"), ["model.safetensors"])
    }
}
