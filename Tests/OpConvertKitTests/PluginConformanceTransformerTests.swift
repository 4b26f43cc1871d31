import COpConvertPluginABI
import Foundation
import XCTest
@testable import OpConvertKit

/// The real functions a planted bug wraps (C function pointers cannot capture context).
/// Written once per test before the suite runs, read only by the shims during it.
nonisolated(unsafe) private var realTransformerTable = opc_plugin()

/// `plugin check`'s v3 cases: the CPU plugin passes them, and planted transformer bugs fail
/// exactly the cases that exercise them.
final class PluginConformanceTransformerTests: XCTestCase {
    func failedNames(_ r: ConformanceReport) -> Set<String> { Set(r.cases.filter { !$0.ok }.map(\.name)) }

    func testCPUPluginPassesEveryTransformerCase() throws {
        let r = PluginConformance(plugin: try KernelPlugin.load(path: nil)).run()
        XCTAssertEqual(r.failed, 0, r.cases.filter { !$0.ok }.map(\.line).joined(separator: "\n"))
        let names = Set(r.cases.map(\.name))
        for expected in ["attention_backward batch 2, seq 17, heads 4/kv 2, head_dim 8 +4B, NaN outputs",
                         "attention_forward batch 1, seq 130, heads 2/kv 1, head_dim 16 +4B, NaN outputs",
                         "attention_forward batch 1, seq 1, heads 4/kv 2, head_dim 6 +4B, NaN outputs",
                         "rope 17x4x8 +4B inverse", "rmsnorm_backward 17x65 +4B dx=dy dw NULL", "token_xent 64x1000 +4B, ignored rows, in place",
                         "embedding_forward id 10 of vocab 10: OPC_E_INVALID, nothing written",
                         "rope position -1 of 10 table rows: OPC_E_INVALID, nothing written",
                         "token_xent label -101 of 4 classes: OPC_E_INVALID, nothing written",
                         "attention_forward heads 4, kv_heads 3: OPC_E_INVALID, nothing written",
                         "silu_gate_backward 1001 +4B dg=g du=u", "deterministic: attention forward and backward, seq 96, heads 4/kv 2"] {
            XCTAssertTrue(names.contains(expected), "no case \(expected)")
        }
        XCTAssertGreaterThan(r.cases.filter { $0.name.contains("attention") }.count, 12)
    }

    func testARoPEThatIgnoresInverseFailsOnlyTheInverseCases() throws {
        let p = try KernelPlugin.load(path: nil)
        realTransformerTable = p.table
        var broken = p.table
        broken.rope = { ctx, rows, heads, hd, x, pos, tableRows, cos, sin, _ in
            realTransformerTable.rope!(ctx, rows, heads, hd, x, pos, tableRows, cos, sin, 0)
        }
        let failed = failedNames(PluginConformance(plugin: p, device: 0, table: broken).run())
        XCTAssertFalse(failed.isEmpty)
        // The forward cases fail their round trip too (it applies the inverse); nothing else fails.
        XCTAssertTrue(failed.allSatisfy { $0.hasPrefix("rope ") }, "\(failed)")
        XCTAssertTrue(failed.contains("rope 17x4x8 +4B inverse"), "\(failed)")
    }

    func testATokenXentThatKeepsIgnoredRowsAndAnAttentionThatSkipsAHeadFail() throws {
        let p = try KernelPlugin.load(path: nil)
        realTransformerTable = p.table
        var broken = p.table
        // Gives every ignored row the gradient of class 0 (as if the label were 0).
        broken.token_xent = { ctx, rows, classes, logits, labels, ignore, scale, dlogits, loss, count in
            let code = realTransformerTable.token_xent!(ctx, rows, classes, logits, labels, ignore, scale, dlogits, loss, count)
            guard code == 0, let labels, let dlogits else { return code }
            let l = labels.assumingMemoryBound(to: Int64.self), d = dlogits.assumingMemoryBound(to: Float.self)
            for i in 0..<Int(rows) where l[i] == ignore { d[i * Int(classes)] = -scale }
            return code
        }
        // dk/dv from the group's first query head only (a GQA bug).
        broken.attention_backward = { ctx, b, t, h, kvh, d, scale, q, k, v, probs, dout, dq, dk, dv in
            guard h > kvh, kvh > 0, h % kvh == 0, b > 0, t > 0, d > 0, dout != nil else { return realTransformerTable.attention_backward!(ctx, b, t, h, kvh, d, scale, q, k, v, probs, dout, dq, dk, dv) }
            // Run it as if only the first head of each group existed: heads = kv_heads over a
            // copy of dout with the other heads' rows zeroed.
            let group = Int(h / kvh), rowsCount = Int(b * t), width = Int(h * d)
            let zeroed = UnsafeMutablePointer<Float>.allocate(capacity: rowsCount * width)
            defer { zeroed.deallocate() }
            let src = dout!.assumingMemoryBound(to: Float.self)
            for r in 0..<rowsCount {
                for head in 0..<Int(h) {
                    for j in 0..<Int(d) {
                        zeroed[r * width + head * Int(d) + j] = head % group == 0 ? src[r * width + head * Int(d) + j] : 0
                    }
                }
            }
            return realTransformerTable.attention_backward!(ctx, b, t, h, kvh, d, scale, q, k, v, probs, UnsafeMutableRawPointer(zeroed), dq, dk, dv)
        }
        let failed = failedNames(PluginConformance(plugin: p, device: 0, table: broken).run())
        XCTAssertTrue(failed.contains("token_xent 17x33 +4B, ignored rows"), "\(failed)")
        XCTAssertTrue(failed.contains("token_xent every row ignored: zero loss, count 0, zero dlogits"), "\(failed)")
        XCTAssertTrue(failed.contains("attention_backward batch 2, seq 17, heads 4/kv 2, head_dim 8 +4B, NaN outputs"), "\(failed)")
        XCTAssertTrue(failed.contains("attention_backward batch 1, seq 17, heads 4/kv 1, head_dim 5 +4B, NaN outputs"), "\(failed)")
        XCTAssertFalse(failed.contains("attention_backward batch 2, seq 5, heads 2/kv 2, head_dim 3 +4B, NaN outputs"),
                       "no group, no bug")
        XCTAssertTrue(failed.allSatisfy { $0.hasPrefix("token_xent") || $0.hasPrefix("attention_backward") }, "\(failed)")
    }
}
