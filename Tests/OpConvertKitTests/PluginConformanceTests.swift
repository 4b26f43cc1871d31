import COpConvertPluginABI
import Foundation
import XCTest
@testable import OpConvertKit

/// The real functions a planted bug wraps (C function pointers cannot capture context).
/// Written once per test before the suite runs, read only by the shims during it.
nonisolated(unsafe) private var realTable = opc_plugin()
/// Calls of the planted non-deterministic sum_squares (same single-threaded use).
nonisolated(unsafe) private var sumSquaresCalls = 0

/// `plugin check`'s suite: the CPU plugin passes it, and a plugin with a planted bug fails
/// exactly the cases that exercise the bug.
final class PluginConformanceTests: XCTestCase {
    func plugin() throws -> KernelPlugin { try KernelPlugin.load(path: nil) }

    func failures(_ r: ConformanceReport) -> [ConformanceCase] { r.cases.filter { !$0.ok } }

    func testCPUPluginPassesEveryCase() throws {
        var heard = 0
        let r = PluginConformance(plugin: try plugin()).run(deviceLabel: "cpu") { _ in heard += 1 }
        XCTAssertEqual(r.failed, 0, failures(r).map(\.line).joined(separator: "\n"))
        XCTAssertGreaterThan(r.passed, 150)
        XCTAssertEqual(heard, r.cases.count, "every case is reported as it finishes")
        XCTAssertEqual(r.device, "cpu")
        XCTAssertEqual(r.abiVersion, 3)
        let names = Set(r.cases.map(\.name))
        for expected in ["gemm TT 17x33x65 lda+3 ldb+5 ldc+2 +4B alpha=0.75 beta=-0.5", "gemm NT 256x384x320 beta=0 NaN C",
                         "gemm NN 5x7x0 alpha=0.75 beta=0.5", "divide 1001 +4B out=a", "multiply 1001 +4B out=b",
                         "relu_forward 1001 +4B in place", "softmax_xent 64x1000 +4B in place", "probe", "device_info 0",
                         "alloc(0) twice: distinct pointers", "deterministic: gemm NN 256x384x320", "compile_kernels sm_80",
                         "adamw t=0: OPC_E_INVALID, nothing written", "softmax_xent label 4 of 4 classes: OPC_E_INVALID, nothing written"] {
            XCTAssertTrue(names.contains(expected), "no case \(expected)")
        }
        XCTAssertTrue(r.cases.first!.line.hasPrefix("ok   "))
    }

    func testCompileOnlyOnTheCPUPluginHasNoCasesAndSaysWhy() throws {
        let r = PluginConformance(plugin: try plugin()).run(compileOnly: true)
        XCTAssertEqual(r.cases.count, 0)
        XCTAssertEqual(r.notes, ["the CPU plugin compiles nothing at run time"])
    }

    func testAGemmThatIsSlightlyOffFailsOnlyGemmCases() throws {
        let p = try plugin()
        realTable = p.table
        var broken = p.table
        // C[0] += 1e-3 after the real product: wrong, but only just.
        broken.gemm = { ctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc in
            let code = realTable.gemm!(ctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
            if code == 0, m > 0, n > 0, let c { c.assumingMemoryBound(to: Float.self)[0] += 1e-3 }
            return code
        }
        let r = PluginConformance(plugin: p, device: 0, table: broken).run()
        let failed = failures(r)
        XCTAssertFalse(failed.isEmpty)
        XCTAssertTrue(failed.allSatisfy { $0.name.hasPrefix("gemm ") }, failed.map(\.name).joined(separator: ", "))
        let big = try XCTUnwrap(failed.first { $0.name.hasPrefix("gemm NN 17x33x65") })
        XCTAssertTrue(big.line.hasPrefix("FAIL gemm NN 17x33x65"), big.line)
        XCTAssertTrue(big.detail.contains("max rel err") && big.detail.contains("at [0]"), big.detail)
        XCTAssertFalse(failed.contains { $0.name.contains("0x0x0") }, "an empty product has no C[0] to break")
    }

    func testAllocWithoutZeroFillAndASoftmaxThatWritesBeforeCheckingFail() throws {
        let p = try plugin()
        realTable = p.table
        var broken = p.table
        broken.alloc = { ctx, bytes, out in
            let code = realTable.alloc!(ctx, bytes, out)
            if code == 0, bytes > 0, let q = out?.pointee { q.storeBytes(of: 0xFF, as: UInt8.self) }
            return code
        }
        // Writes dlogits, then validates the labels (the header forbids this order).
        broken.softmax_xent = { ctx, rows, classes, logits, labels, dlogits, loss, correct in
            if rows > 0, classes > 0, let dlogits { dlogits.assumingMemoryBound(to: Float.self)[0] = 0 }
            return realTable.softmax_xent!(ctx, rows, classes, logits, labels, dlogits, loss, correct)
        }
        let r = PluginConformance(plugin: p, device: 0, table: broken).run()
        let names = Set(failures(r).map(\.name))
        XCTAssertTrue(names.contains("alloc 1 bytes: zero-filled, 64-byte aligned"), "\(names)")
        XCTAssertTrue(names.contains("softmax_xent label 4 of 4 classes: OPC_E_INVALID, nothing written"), "\(names)")
        XCTAssertTrue(names.contains("softmax_xent label -1 of 4 classes: OPC_E_INVALID, nothing written"), "\(names)")
        XCTAssertFalse(names.contains { $0.hasPrefix("gemm") || $0.hasPrefix("adamw") }, "\(names)")
    }

    func testADivideThatIgnoresAliasingAndANonDeterministicSumFail() throws {
        let p = try plugin()
        realTable = p.table
        var broken = p.table
        // Zeroes out first, then divides: wrong whenever out aliases a or b.
        broken.divide = { ctx, n, a, b, out in
            if n > 0, let out { memset(out, 0, n * 4) }
            return realTable.divide!(ctx, n, a, b, out)
        }
        sumSquaresCalls = 0
        broken.sum_squares = { ctx, n, x, out in
            let code = realTable.sum_squares!(ctx, n, x, out)
            sumSquaresCalls += 1
            if code == 0, n > (1 << 19), sumSquaresCalls % 2 == 0, let out { out.pointee = out.pointee.nextUp }
            return code
        }
        let r = PluginConformance(plugin: p, device: 0, table: broken).run()
        let names = Set(failures(r).map(\.name))
        XCTAssertEqual(names.filter { $0.hasPrefix("divide") }, Set(["divide 1 out=a", "divide 1 out=b", "divide 1001 +4B out=a", "divide 1001 +4B out=b"]))
        XCTAssertTrue(names.contains("deterministic: sum_squares 1M"), "\(names)")
    }
}
