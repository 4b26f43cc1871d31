import Foundation
import XCTest
@testable import OpConvertKit

/// --safe, unmatched names, ambiguous matches, prefixes and weights on hand-made inputs.
final class MergeSafetyTests: XCTestCase {
    func makeBase(_ dir: String, dtype: DType = .f16, rows: [[Float]]) throws -> String {
        let path = dir + "/base.safetensors"
        let flat = rows.flatMap { $0 }
        var bytes = [UInt8](repeating: 0, count: flat.count * dtype.byteWidth!)
        flat.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { DTypeConversion.encode(v.baseAddress!, to: $0.baseAddress!, dtype, count: flat.count) } }
        try SafetensorsWriter.write(path: path, tensors: [(TensorSpec(name: "model.proj.weight", dtype: dtype, shape: [rows.count, rows[0].count]), bytes)],
                                    metadata: ["format": "pt"])
        return path
    }

    func makeAdapter(_ dir: String, module: String = "model.proj", a: [Float], b: [Float], r: Int, out: Int, inF: Int, magnitude: [Float]? = nil) throws -> String {
        let path = dir + "/adapter-\(UUID().uuidString)"
        let config: JSONValue = .object([("peft_type", .string("LORA")), ("r", .int(Int64(r))), ("lora_alpha", .int(Int64(r))),
                                         ("use_dora", .bool(magnitude != nil))])
        try PEFTAdapterWriter.write(to: path, config: config, modules: [
            MaterializedModule(path: module, a: a, aShape: [r, inF], b: b, bShape: [out, r], magnitude: magnitude, rank: r),
        ], overwrite: false)
        return path
    }

    func testSafeRefusesOverflowAndNamesTheModule() throws {
        let dir = TestPaths.scratch(self)
        let base = try makeBase(dir, rows: [[60000, 1], [2, 3]])
        let adapter = try makeAdapter(dir, a: [1, 0], b: [10000, 0], r: 1, out: 2, inF: 2)
        XCTAssertThrowsError(try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/safe.safetensors", safe: true, showProgress: false))) { error in
            XCTAssertTrue("\(error)".contains("model.proj"), "\(error)")
            XCTAssertTrue("\(error)".contains("non-finite"), "\(error)")
        }
        XCTAssertFalse(FileSystem.exists(dir + "/safe.safetensors"))
        // Without --safe it rounds to +Inf as PEFT would.
        _ = try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/unsafe.safetensors", showProgress: false))
        let store = try TensorStore.open(dir + "/unsafe.safetensors")
        XCTAssertEqual(try TensorData.stored(store, store.entries[0]).floats()[0], .infinity)
    }

    func testZeroNormDoRARow() throws {
        let dir = TestPaths.scratch(self)
        let base = try makeBase(dir, dtype: .f32, rows: [[0, 0], [2, 3]])
        let adapter = try makeAdapter(dir, a: [1, 1], b: [0, 1], r: 1, out: 2, inF: 2, magnitude: [1, 1])
        XCTAssertThrowsError(try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/o1.safetensors", safe: true, showProgress: false))) { error in
            XCTAssertTrue("\(error)".contains("zero"), "\(error)")
            XCTAssertTrue("\(error)".contains("model.proj"), "\(error)")
        }
        let summary = try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/o2.safetensors", showProgress: false))
        XCTAssertEqual(summary.warnings.count, 1)
    }

    func testPrefixDifferencesResolveAndUnmatchedModulesAreListed() throws {
        let dir = TestPaths.scratch(self)
        let base = try makeBase(dir, dtype: .f32, rows: [[1, 2], [3, 4]])
        // Adapter saved from a wrapper that adds a leading "model." (base has "model.proj").
        let prefixed = try makeAdapter(dir, module: "model.model.proj", a: [1, 0], b: [1, 0], r: 1, out: 2, inF: 2)
        let s = try Merger.run(MergeOptions(base: base, adapters: [(prefixed, 2)], output: dir + "/p.safetensors", showProgress: false))
        XCTAssertEqual(s.mergedTensors, 1)
        let store = try TensorStore.open(dir + "/p.safetensors")
        // W + weight·s·B·A with s = alpha/r = 1, weight 2: [1+2, 2], [3, 4]
        XCTAssertEqual(try TensorData.stored(store, store.entries[0]).floats(), [3, 2, 3, 4])
        let wrong = try makeAdapter(dir, module: "model.nothere", a: [1, 0], b: [1, 0], r: 1, out: 2, inF: 2)
        XCTAssertThrowsError(try Merger.run(MergeOptions(base: base, adapters: [(wrong, 1)], output: dir + "/w.safetensors", showProgress: false))) { error in
            XCTAssertTrue("\(error)".contains("model.nothere"), "\(error)")
            XCTAssertTrue("\(error)".contains("match no base tensor"), "\(error)")
            XCTAssertEqual(ExitStatus.of(error), .dataError)
        }
    }
}
