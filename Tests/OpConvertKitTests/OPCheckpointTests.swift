import Foundation
import XCTest
@testable import OpConvertKit

/// OP checkpoints against the independent PyTorch OP-LoRA implementation in
/// fixtures/scripts/make_op_fixtures.py, and the PEFT adapter / merged model it implies.
final class OPCheckpointTests: XCTestCase {
    struct Case {
        var name: String, path: String, base: String, adapter: String, merged: String
        var keyMap: String?
        var trainParams: Int, inferenceParams: Int
    }

    private func root() throws -> [String: Any] {
        let url = URL(fileURLWithPath: TestPaths.fixture("op/cases.json"))
        return try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    private func cases() throws -> [Case] {
        (try root()["checkpoints"] as! [[String: Any]]).map { c in
            Case(name: c["name"] as! String, path: TestPaths.fixture(c["path"] as! String), base: TestPaths.fixture(c["base"] as! String),
                 adapter: TestPaths.fixture(c["adapter"] as! String), merged: TestPaths.fixture(c["merged"] as! String),
                 keyMap: (c["key_map"] as? String).map { TestPaths.fixture($0) },
                 trainParams: c["train_params"] as! Int, inferenceParams: c["inference_params"] as! Int)
        }
    }

    func testMaterializeMatchesReferenceAdapter() throws {
        for c in try cases() {
            let out = TestPaths.scratch(self) + "/adapter"
            let s = try Materializer.run(MaterializeOptions(checkpoint: c.path, output: out, base: c.base, keyMap: c.keyMap))
            XCTAssertEqual(s.trainParameters, c.trainParams, c.name)
            XCTAssertEqual(s.inferenceParameters, c.inferenceParams, c.name)
            let got = try TensorStore.open(out + "/adapter_model.safetensors")
            let want = try TensorStore.open(c.adapter + "/adapter_model.safetensors")
            XCTAssertEqual(got.entries.map(\.info.name).sorted(), want.entries.map(\.info.name).sorted(), "\(c.name): PEFT keys")
            for w in want.entries {
                guard let g = got.entry(named: w.info.name) else { continue }
                XCTAssertEqual(g.info.shape, w.info.shape, "\(c.name) \(w.info.name)")
                XCTAssertEqual(g.info.dtype, .f32)
                let gv = try TensorData.stored(got, g).floats(), wv = try TensorData.stored(want, w).floats()
                let scale = wv.map { abs($0) }.max() ?? 0
                for i in gv.indices where abs(gv[i] - wv[i]) > 1e-6 * max(scale, 1e-3) {
                    XCTFail("\(c.name) \(w.info.name)[\(i)]: \(gv[i]) vs reference \(wv[i])")
                    break
                }
            }
            // The config is PEFT's own adapter_config.json for the same settings.
            let gc = try JSONParser.parse(try FileSystem.readAll(out + "/adapter_config.json"))
            let wc = try JSONParser.parse(try FileSystem.readAll(c.adapter + "/adapter_config.json"))
            XCTAssertEqual(Self.sorted(gc), Self.sorted(wc), "\(c.name): adapter_config.json")
        }
    }

    static func sorted(_ v: JSONValue) -> JSONValue {
        switch v {
        case let .object(m): return .object(m.map { ($0.0, sorted($0.1)) }.sorted { $0.0 < $1.0 })
        case let .array(a): return .array(a.map(sorted))
        case let .int(i): return .double(Double(i))
        default: return v
        }
    }

    func testMergingCheckpointEqualsMergingItsAdapterAndMatchesPEFT() throws {
        for c in try cases() where c.keyMap == nil {
            let dir = TestPaths.scratch(self)
            _ = try Materializer.run(MaterializeOptions(checkpoint: c.path, output: dir + "/adapter", base: c.base))
            _ = try Merger.run(MergeOptions(base: c.base, adapters: [(c.path, 1)], output: dir + "/direct", showProgress: false))
            _ = try Merger.run(MergeOptions(base: c.base, adapters: [(dir + "/adapter", 1)], output: dir + "/via", showProgress: false))
            let direct = try TensorStore.open(dir + "/direct"), via = try TensorStore.open(dir + "/via")
            for e in direct.entries {
                XCTAssertEqual(Array(direct.data(e)), Array(via.data(via.entry(named: e.info.name)!)), "\(c.name) \(e.info.name): not bit-identical")
            }
            let want = try TensorStore.open(c.merged)
            for w in want.entries {
                guard let g = direct.entry(named: w.info.name) else { XCTFail("\(c.name): \(w.info.name) missing"); continue }
                if let m = MergeFixtureTests.mismatch(Array(direct.data(g)), Array(want.data(w)), dtype: w.info.dtype) {
                    XCTFail("\(c.name) \(w.info.name): \(m)")
                }
            }
        }
    }

    func testBadCheckpointsAreRefusedNamingTheModule() throws {
        for bad in try root()["bad"] as! [[String: Any]] {
            let path = TestPaths.fixture(bad["path"] as! String)
            let out = TestPaths.scratch(self) + "/adapter"
            XCTAssertThrowsError(try Materializer.run(MaterializeOptions(checkpoint: path, output: out, base: TestPaths.fixture(bad["base"] as! String)))) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(bad["error_contains"] as! String), "\(bad["name"]!): \(message)")
                if (bad["name"] as! String) != "unknown_activation" && (bad["name"] as! String) != "format_version_2" {
                    XCTAssertTrue(message.contains(bad["module"] as! String), "\(bad["name"]!) should name the module: \(message)")
                }
            }
            XCTAssertFalse(FileSystem.exists(out))
        }
    }

    func testShapesWithoutBaseAndTheirLimits() throws {
        let all = try cases()
        // Separate A/B MLPs pin the shapes down; joint OP-LoRA needs the base.
        let separate = all.first { $0.name == "op_lora_separate" }!
        XCTAssertNoThrow(try Materializer.run(MaterializeOptions(checkpoint: separate.path, output: TestPaths.scratch(self) + "/a")))
        let joint = all.first { $0.name == "op_lora_f32" }!
        XCTAssertThrowsError(try Materializer.run(MaterializeOptions(checkpoint: joint.path, output: TestPaths.scratch(self) + "/b"))) { error in
            XCTAssertTrue("\(error)".contains("--base"), "\(error)")
        }
    }

    func testKeyMapCompressionAndInspect() throws {
        let all = try cases()
        let foreign = all.first { $0.keyMap != nil }!
        // inspect points at --key-map when names are foreign.
        let hint = try Inspector.inspect(foreign.path)
        XCTAssertTrue(hint.details?["suggestion"]?.contains("--key-map") == true)
        // convert with the key map and --compress: a v1 checkpoint that materializes the same.
        let dir = TestPaths.scratch(self)
        var o = ConvertOptions(input: foreign.path, output: dir + "/v1")
        o.keyMap = foreign.keyMap
        o.compress = true
        _ = try Converter.run(o)
        XCTAssertEqual(try FileSystem.list(dir + "/v1"), ["op_config.json", "op_model.safetensors.zst"])
        let report = try Inspector.inspect(dir + "/v1")
        XCTAssertEqual(report.kind, "op-checkpoint")
        XCTAssertEqual(report.details?["train_parameters"], String(foreign.trainParams))
        XCTAssertEqual(report.details?["inference_parameters"], String(foreign.inferenceParams))
        _ = try Materializer.run(MaterializeOptions(checkpoint: dir + "/v1", output: dir + "/a1", base: foreign.base))
        _ = try Materializer.run(MaterializeOptions(checkpoint: foreign.path, output: dir + "/a2", base: foreign.base, keyMap: foreign.keyMap))
        XCTAssertEqual(readBytes(dir + "/a1/adapter_model.safetensors"), readBytes(dir + "/a2/adapter_model.safetensors"))
    }
}
