import Foundation
import XCTest
@testable import OpConvertKit

/// `merge` against PEFT's own merge_and_unload() outputs (fixtures/peft, made by
/// fixtures/scripts/make_peft_fixtures.py with torch, transformers and PEFT).
final class MergeFixtureTests: XCTestCase {
    struct Case {
        var name: String
        var base: String
        var adapters: [(path: String, weight: Double)]
        var expected: String
        var changed: Set<String>
    }

    private func load(_ key: String) throws -> [Case] {
        let url = URL(fileURLWithPath: TestPaths.fixture("peft/cases.json"))
        let root = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        return (root[key] as! [[String: Any]]).map { c in
            Case(name: c["name"] as! String,
                 base: TestPaths.fixture("peft/" + (c["base"] as! String)),
                 adapters: (c["adapters"] as! [[String: Any]]).map { (TestPaths.fixture("peft/" + ($0["path"] as! String)), $0["weight"] as! Double) },
                 expected: TestPaths.fixture("peft/" + (c["expected"] as! String)),
                 changed: Set(c["changed"] as? [String] ?? []))
        }
    }

    /// Merges the way each fixture was made: one adapter per merge for sequential cases
    /// (PEFT merged, saved and reloaded between adapters), all at once for joint cases.
    private func merge(_ c: Case, sequential: Bool) throws -> String {
        let scratch = TestPaths.scratch(self)
        var base = c.base
        let steps: [[(path: String, weight: Double)]] = sequential ? c.adapters.map { [$0] } : [c.adapters]
        for (i, adapters) in steps.enumerated() {
            let out = scratch + "/step\(i)"
            _ = try Merger.run(MergeOptions(base: base, adapters: adapters, output: out, maxShardSize: 40_000, showProgress: false))
            base = out
        }
        return base
    }

    private func compare(_ c: Case, output: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let got = try TensorStore.open(output)
        let want = try TensorStore.open(c.expected)
        let base = try TensorStore.open(c.base)
        XCTAssertEqual(Set(got.entries.map(\.info.name)), Set(want.entries.map(\.info.name)), "\(c.name): tensor names", file: file, line: line)
        for w in want.entries {
            guard let g = got.entry(named: w.info.name) else { continue }
            XCTAssertEqual(g.info.dtype, w.info.dtype, "\(c.name): \(w.info.name) dtype", file: file, line: line)
            XCTAssertEqual(g.info.shape, w.info.shape, "\(c.name): \(w.info.name) shape", file: file, line: line)
            let gb = Array(got.data(g)), wb = Array(want.data(w))
            if !c.changed.contains(w.info.name) {
                // Untouched tensors are copied byte for byte from the base.
                XCTAssertEqual(gb, Array(base.data(base.entry(named: w.info.name)!)), "\(c.name): \(w.info.name) should be untouched", file: file, line: line)
                continue
            }
            if let message = Self.mismatch(gb, wb, dtype: w.info.dtype) {
                XCTFail("\(c.name): \(w.info.name): \(message)", file: file, line: line)
            }
        }
        // The merged directory carries the base's other files.
        for name in base.auxiliaryFiles {
            XCTAssertTrue(FileSystem.exists(output + "/" + name), "\(c.name): \(name) not copied", file: file, line: line)
        }
    }

    /// f32: within a few f32 roundings of the tensor's scale; f16/bf16: at most 1 ulp.
    static func mismatch(_ got: [UInt8], _ want: [UInt8], dtype: DType) -> String? {
        guard got.count == want.count else { return "size \(got.count) vs \(want.count)" }
        switch dtype {
        case .f32:
            let g = got.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let w = want.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let scale = w.map { abs($0) }.max() ?? 0
            // f32 results differ from PEFT's by summation order alone, and that order is
            // OpenBLAS's choice per CPU (its Zen kernels give DoRA rows 5 ulp off where its
            // Haswell kernels gave 3): allow 8 ulp of the tensor's largest magnitude.
            let tol = 8 * scale.ulp
            for i in g.indices where abs(g[i] - w[i]) > tol {
                return "element \(i): \(g[i]) vs PEFT \(w[i]) (tolerance \(tol))"
            }
        case .bf16, .f16:
            let g = got.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            let w = want.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            // PEFT merges in the base dtype: W + ΔW and DoRA's rescale each round at the
            // weights' magnitude, so a near-cancelling element can be several of its own ulps
            // off (llama_dora_bf16 o_proj element 3350: 4). opconvert rounds the f64 value
            // once (MergeOneRoundingTests holds it to the nearest value); here: within 1 ulp,
            // or within one rounding at the tensor's largest magnitude.
            let decode = { (bits: [UInt16]) -> [Float] in
                var out = [Float](repeating: 0, count: bits.count)
                bits.withUnsafeBytes { DTypeConversion.decode($0.baseAddress!, dtype, to: &out, count: bits.count) }
                return out
            }
            let gv = decode(g), wv = decode(w)
            let largest = wv.map { abs($0) }.max() ?? 0
            let step = dtype == .bf16 ? Float(bitPattern: (largest.bitPattern & 0x7F80_0000) &- (7 << 23)) : Float(Float16(largest).ulp)
            for i in g.indices where g[i] != w[i] {
                let sameSign = (g[i] & 0x8000) == (w[i] & 0x8000)
                if (!sameSign || abs(Int(g[i]) - Int(w[i])) > 1) && !(abs(gv[i] - wv[i]) <= step) {
                    return "element \(i): bits \(String(g[i], radix: 16)) vs PEFT \(String(w[i], radix: 16)) (more than 1 ulp, and more than \(step) apart)"
                }
            }
        default:
            return got == want ? nil : "bytes differ"
        }
        return nil
    }

    func testEveryPEFTCaseMatches() throws {
        for c in try load("cases") {
            try compare(c, output: try merge(c, sequential: true))
        }
    }

    func testJointMultiAdapterMergeMatchesPEFT() throws {
        for c in try load("joint_cases") {
            try compare(c, output: try merge(c, sequential: false))
        }
    }

    func testBadAdaptersAreRefusedClearly() throws {
        let url = URL(fileURLWithPath: TestPaths.fixture("peft/cases.json"))
        let root = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        for bad in root["bad"] as! [[String: Any]] {
            let scratch = TestPaths.scratch(self)
            let adapter = TestPaths.fixture("peft/" + (bad["adapter"] as! String))
            XCTAssertThrowsError(try Merger.run(MergeOptions(base: TestPaths.fixture("peft/" + (bad["base"] as! String)),
                                                             adapters: [(adapter, 1)], output: scratch + "/out", showProgress: false))) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(bad["error_contains"] as! String), "\(bad["name"]!): \(message)")
                XCTAssertNotEqual(ExitStatus.of(error), .success)
            }
            XCTAssertFalse(FileSystem.exists(scratch + "/out"), "nothing is written on error")
            XCTAssertEqual(try FileSystem.list(scratch), [], "no temporary left behind")
        }
    }
}
