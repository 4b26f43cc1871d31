import Foundation
import XCTest
@testable import OpConvertKit

final class VerifyMergeTests: XCTestCase {
    let base = TestPaths.fixture("peft/models/llama")

    func merge(_ adapters: [(String, Double)], base: String? = nil) throws -> String {
        let out = TestPaths.scratch(self) + "/merged"
        _ = try Merger.run(MergeOptions(base: base ?? self.base, adapters: adapters.map { (path: $0.0, weight: $0.1) }, output: out,
                                        showProgress: false))
        return out
    }

    /// The merged model as one .safetensors file with `edit` applied to one tensor's bytes.
    func tampered(_ merged: String, tensor: String, edit: (inout [UInt8]) -> Void) throws -> String {
        let store = try TensorStore.open(merged)
        var tensors: [(TensorSpec, [UInt8])] = []
        for e in store.entries {
            var bytes = Array(store.data(e))
            if e.info.name == tensor { edit(&bytes) }
            tensors.append((TensorSpec(name: e.info.name, dtype: e.info.dtype, shape: e.info.shape), bytes))
        }
        let path = TestPaths.scratch(self) + "/tampered.safetensors"
        try SafetensorsWriter.write(path: path, tensors: tensors, metadata: nil)
        return path
    }

    func testOpconvertMergeIsWithinOneRounding() throws {
        for (adapters, baseDir) in [([("peft/adapters/llama_lora", 1.0)], "peft/models/llama"),
                                    ([("peft/adapters/llama_lora", 1.0), ("peft/adapters/llama_lora_b", 0.5)], "peft/models/llama_f16")] {
            let paths = adapters.map { (TestPaths.fixture($0.0), $0.1) }
            let merged = try merge(paths, base: TestPaths.fixture(baseDir))
            let s = try Verifier.run(VerifyOptions(base: TestPaths.fixture(baseDir), adapters: paths.map(\.0), weights: paths.map(\.1),
                                                   merged: merged))
            XCTAssertTrue(s.ok, "\(adapters): \(s.changed.filter { $0.outside > 0 }.map(\.name))")
            XCTAssertNil(s.failure)
            XCTAssertEqual(s.changed.count, 14)
            XCTAssertEqual(s.untouchedEqual, 15)
            // One rounding: less than one ulp from the reference (0.5 or less for the nearest).
            for t in s.changed {
                XCTAssertLessThan(t.maxUlp, 1, t.name)
                XCTAssertLessThan(t.meanUlp, 0.3, t.name)
            }
        }
    }

    func testCombinedCatMergesLikeBothAdapters() throws {
        let a = TestPaths.fixture("peft/adapters/llama_lora"), b = TestPaths.fixture("peft/adapters/llama_lora_b")
        let cat = TestPaths.scratch(self) + "/cat"
        _ = try Combiner.run(CombineOptions(adapters: [a, b], weights: [1, 0.5], output: cat))
        let merged = try merge([(cat, 1)])
        let s = try Verifier.run(VerifyOptions(base: base, adapters: [a, b], weights: [1, 0.5], merged: merged))
        XCTAssertTrue(s.ok, "\(s.changed.filter { $0.outside > 0 })")
    }

    func testAnElementTwoULPsOffFailsNamingTheTensor() throws {
        let adapter = TestPaths.fixture("peft/adapters/llama_lora")
        let merged = try merge([(adapter, 1)])
        let name = "model.layers.1.mlp.up_proj.weight"
        // BF16 element 7: two steps up in its bit pattern (same sign, away from zero or toward it).
        let bad = try tampered(merged, tensor: name) { bytes in
            var bits = UInt16(bytes[14]) | UInt16(bytes[15]) << 8
            bits &+= 2
            bytes[14] = UInt8(bits & 0xFF); bytes[15] = UInt8(bits >> 8)
        }
        let s = try Verifier.run(VerifyOptions(base: base, adapters: [adapter], merged: bad))
        XCTAssertFalse(s.ok)
        let t = try XCTUnwrap(s.changed.first { $0.name == name })
        XCTAssertEqual(t.outside, 1)
        XCTAssertGreaterThan(t.maxUlp, 1.5)
        let failure = try XCTUnwrap(s.failure)
        XCTAssertEqual(failure.category, .malformedInput)
        XCTAssertEqual(ExitStatus.of(failure).rawValue, 65)
        XCTAssertTrue(failure.description.contains(name))
        // The other neighbour of the reference is still one rounding.
        XCTAssertTrue(s.changed.filter { $0.name != name }.allSatisfy { $0.outside == 0 })
    }

    func testUntouchedTensorMustBeByteEqual() throws {
        let adapter = TestPaths.fixture("peft/adapters/llama_lora")
        let merged = try merge([(adapter, 1)])
        let bad = try tampered(merged, tensor: "model.norm.weight") { $0[0] ^= 1 }
        let s = try Verifier.run(VerifyOptions(base: base, adapters: [adapter], merged: bad))
        XCTAssertEqual(s.untouchedDiffering, ["model.norm.weight"])
        XCTAssertFalse(s.ok)
        XCTAssertTrue(s.failure?.description.contains("model.norm.weight") ?? false)
    }

    func testWrongWeightIsDetected() throws {
        let adapter = TestPaths.fixture("peft/adapters/llama_lora")
        let merged = try merge([(adapter, 1)])
        let s = try Verifier.run(VerifyOptions(base: base, adapters: [adapter], weights: [0.5], merged: merged))
        XCTAssertFalse(s.ok)
        XCTAssertTrue(s.changed.allSatisfy { $0.outside > 0 })
    }

    func testMissingTensorAndShapeMismatchAreMalformed() throws {
        let adapter = TestPaths.fixture("peft/adapters/llama_lora")
        // The f32 copy of another model: same names, so use gpt2 for a mismatch.
        XCTAssertThrowsError(try Verifier.run(VerifyOptions(base: base, adapters: [adapter],
                                                            merged: TestPaths.fixture("peft/models/gpt2")))) {
            XCTAssertEqual(($0 as? CategorizedError)?.category, .malformedInput)
        }
    }
}
