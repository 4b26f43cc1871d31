import COpConvertKernels
import Foundation
import XCTest
@testable import OpConvertKit

/// Merges round once: every merged element is the f64 reference (Verifier: base, every
/// adapter's product, DoRA's rescale, LyCORIS reconstructions, all in f64) rounded to nearest
/// in the stored dtype, so at most half an ulp away. PEFT's own merge computes in the base
/// dtype and is further off; these tests hold opconvert to the exact result instead.
final class MergeOneRoundingTests: XCTestCase {
    /// Half an ulp, and the f64 reference's own error (orders of magnitude smaller).
    static let halfULP = 0.5 + 1e-6

    private func json(_ path: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    /// Merges `adapters` into `base` in one run and checks every changed tensor is within half an ulp.
    private func check(_ label: String, base: String, adapters: [(String, Double)], single: Bool) throws -> (tensors: Int, maxULP: Double) {
        let out = TestPaths.scratch(self) + "/\(label)" + (single ? ".safetensors" : "")
        _ = try Merger.run(MergeOptions(base: base, adapters: adapters.map { (path: $0.0, weight: $0.1) }, output: out, showProgress: false))
        let s = try Verifier.run(VerifyOptions(base: base, adapters: adapters.map(\.0), weights: adapters.map(\.1), merged: out))
        XCTAssertTrue(s.ok, "\(label): \(s.changed.filter { $0.outside > 0 }.map(\.name)) \(s.untouchedDiffering)")
        XCTAssertFalse(s.changed.isEmpty, label)
        var worst = 0.0
        for t in s.changed {
            XCTAssertLessThanOrEqual(t.maxUlp, Self.halfULP, "\(label): \(t.name) (\(t.dtype))")
            worst = max(worst, t.maxUlp)
        }
        return (s.changed.count, worst)
    }

    func testEveryPEFTCaseMergesToTheNearestValue() throws {
        let root = try json(TestPaths.fixture("peft/cases.json"))
        var cases = 0
        for key in ["cases", "joint_cases"] {
            for c in try XCTUnwrap(root[key] as? [[String: Any]]) {
                let name = try XCTUnwrap(c["name"] as? String)
                let adapters = try XCTUnwrap(c["adapters"] as? [[String: Any]]).map { (TestPaths.fixture("peft/" + ($0["path"] as! String)), $0["weight"] as! Double) }
                _ = try check(name, base: TestPaths.fixture("peft/" + (c["base"] as! String)), adapters: adapters, single: false)
                cases += 1
            }
        }
        XCTAssertEqual(cases, 22)
    }

    /// Kohya LoRA/LoCon/DoRA, diffusers files and every LyCORIS kind into SD 1.5 (F32) and SDXL
    /// (F16), pipeline directories and single files (OpenCLIP's fused q/k/v rows included).
    func testEverySDCaseMergesToTheNearestValue() throws {
        let root = try json(TestPaths.fixture("sd/cases.json"))
        let bases = try XCTUnwrap(root["bases"] as? [String: [String: Any]])
        var runs = 0, lycoris = 0
        for c in try XCTUnwrap(root["cases"] as? [[String: Any]]) {
            let name = try XCTUnwrap(c["name"] as? String)
            let adapter = TestPaths.fixture("sd/" + (c["adapter"] as! String))
            for id in try XCTUnwrap(c["bases"] as? [String]) {
                let info = try XCTUnwrap(bases[id])
                let single = info["layout"] as? String != "diffusers"
                _ = try check("\(name)-\(id)", base: TestPaths.fixture("sd/" + (info["path"] as! String)), adapters: [(adapter, 1)], single: single)
                runs += 1
            }
            if (c["kind"] as? String)?.hasPrefix("lycoris") == true { lycoris += 1 }
        }
        XCTAssertEqual(runs, 32)
        XCTAssertEqual(lycoris, 8)
    }

    /// LyCORIS deltas are computed from the factors when the merge reaches them, not when the
    /// file is opened (an SDXL LoHa would otherwise hold every delta at once).
    func testLyCORISDeltasAreComputedOnDemand() throws {
        let root = TestPaths.fixture("sd-lycoris")
        for name in ["loha", "loha_tucker", "lokr_both_factorized", "lokr_tucker", "lokr_whole", "locon_tucker"] {
            let a = try AdapterRegistry.open(root + "/\(name).safetensors")
            XCTAssertFalse(a.deltas.isEmpty, name)
            for d in a.deltas {
                guard case let .computed(c) = d.data else { return XCTFail("\(name): \(d.name) is held, not computed") }
                XCTAssertEqual(try c.values().count, d.data.elementCount, "\(name): \(d.name)")
                // Same factors, same bits, every time.
                XCTAssertEqual(try c.values(), try c.values(), "\(name): \(d.name)")
            }
        }
    }

    // MARK: the f64 low-rank kernel

    private func naive(_ dst: [Double], _ L: [Double], _ R: [Double], m: Int, n: Int, r: Int, s: Double) -> [Double] {
        var out = dst
        for i in 0..<m { for j in 0..<n {
            var acc = 0.0
            for k in 0..<r { acc = acc.addingProduct(L[i * r + k], R[k * n + j]) }
            out[i * n + j] = out[i * n + j].addingProduct(s, acc)
        } }
        return out
    }

    private func run(_ dst: [Double], _ L: [Double], _ R: [Double], m: Int, n: Int, r: Int, s: Double, rowSplit: Int? = nil) -> [Double] {
        var out = dst
        out.withUnsafeMutableBufferPointer { d in
            L.withUnsafeBufferPointer { l in
                R.withUnsafeBufferPointer { rr in
                    let split = rowSplit ?? m
                    var i0 = 0
                    while i0 < m {
                        let rows = min(split, m - i0)
                        opc_lowrank_update_f64(d.baseAddress! + i0 * n, n, l.baseAddress! + i0 * r, r, 1, rr.baseAddress!, n, rows, n, r, s)
                        i0 += rows
                    }
                }
            }
        }
        return out
    }

    func testF64KernelIsTheSameFMAChainOnEveryPathAndSplit() {
        var rng = SystemRandomNumberGenerator()
        for (m, n, r) in [(1, 1, 1), (7, 13, 3), (13, 37, 16), (6, 16, 32), (25, 70, 300), (12, 9, 0)] {
            // Values widened from f32, as the merge's factors are.
            func values(_ count: Int) -> [Double] { (0..<count).map { _ in Double(Float.random(in: -1...1, using: &rng)) } }
            let dst = values(m * n), L = values(m * r), R = values(r * n)
            let s = 16.0 / 3.0
            let want = naive(dst, L, R, m: m, n: n, r: r, s: s)
            XCTAssertEqual(run(dst, L, R, m: m, n: n, r: r, s: s), want, "SIMD \(m)x\(n) r\(r)")
            XCTAssertEqual(run(dst, L, R, m: m, n: n, r: r, s: s, rowSplit: 5), want, "split rows \(m)x\(n) r\(r)")
            opc_force_scalar(1)
            XCTAssertEqual(run(dst, L, R, m: m, n: n, r: r, s: s), want, "scalar \(m)x\(n) r\(r)")
            opc_force_scalar(0)
        }
    }

    /// A product whose terms cancel: an f32 running sum loses the small term (1 + 2^-30 is 1
    /// in f32, so 1 + 2^-30 - 1 gave 0); the f64 block keeps it and the merged weight is exact.
    func testF32MergeKeepsWhatAnF32SumWouldLose() throws {
        let dir = TestPaths.scratch(self)
        // W [1, 1] = 0; rank 3, alpha 3 (scale 1): A = [1, 2^-30, 1]ᵀ, B = [1, 1, -1].
        let model = dir + "/model.safetensors"
        try SafetensorsWriter.write(path: model, tensors: [(TensorSpec(name: "layer.weight", dtype: .f32, shape: [1, 1]), floatBytes([0]))], metadata: nil)
        let adapter = dir + "/adapter"
        try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
        try SafetensorsWriter.write(path: adapter + "/adapter_model.safetensors", tensors: [
            (TensorSpec(name: "base_model.model.layer.lora_A.weight", dtype: .f32, shape: [3, 1]), floatBytes([1, 0x1p-30, 1])),
            (TensorSpec(name: "base_model.model.layer.lora_B.weight", dtype: .f32, shape: [1, 3]), floatBytes([1, 1, -1])),
        ], metadata: nil)
        try Data(#"{"peft_type": "LORA", "r": 3, "lora_alpha": 3, "target_modules": ["layer"]}"#.utf8).write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
        let out = dir + "/merged.safetensors"
        _ = try Merger.run(MergeOptions(base: model, adapters: [(adapter, 1)], output: out, showProgress: false))
        let store = try TensorStore.open(out)
        XCTAssertEqual(try TensorData.stored(store, try XCTUnwrap(store.entry(named: "layer.weight"))).floats(), [0x1p-30])
    }

    private func floatBytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }
}
