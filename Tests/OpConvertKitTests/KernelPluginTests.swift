import COpConvertPluginABI
import Foundation
import XCTest
@testable import OpConvertKit

/// The CPU kernel plugin (loaded from next to the test binary, as opconvert loads it from
/// next to its executable) against naive double-precision references, plus loader errors.
final class KernelPluginTests: XCTestCase {
    // One context for the whole class: contexts are cheap, but the plugin is process-wide.
    nonisolated(unsafe) static var sharedContext: KernelContext?

    private func context() throws -> KernelContext {
        if let c = Self.sharedContext { return c }
        let plugin = try KernelPlugin.load(path: nil)
        let c = try plugin.makeContext(threads: 2)
        Self.sharedContext = c
        return c
    }

    // MARK: - Helpers

    /// SplitMix64: deterministic random inputs.
    struct RNG {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        /// Uniform in [-scale, scale).
        mutating func float(_ scale: Float = 1) -> Float {
            Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) * scale
        }
        mutating func floats(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in float(scale) } }
        mutating func int(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    }

    private func assertClose(_ got: [Float], _ want: [Double], tol: Double = 1e-5, _ what: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(what): count", file: file, line: line)
        for i in 0..<min(got.count, want.count) {
            let err = abs(Double(got[i]) - want[i])
            if err > tol * max(1, abs(want[i])) {
                XCTFail("\(what)[\(i)]: got \(got[i]), want \(want[i])", file: file, line: line)
                return
            }
        }
    }

    private func upload(_ ctx: KernelContext, _ values: [Float]) throws -> DeviceBuffer {
        let b = try ctx.alloc(count: values.count)
        try ctx.upload(values, to: b)
        return b
    }

    // MARK: - Loading

    func testLoadsDefaultPluginNextToTheTestBinary() throws {
        let plugin = try KernelPlugin.load(path: nil)
        XCTAssertEqual(plugin.name, "cpu-openblas")
        XCTAssertFalse(plugin.description.isEmpty)
        XCTAssertTrue(plugin.path.hasSuffix("/" + KernelPlugin.defaultLibraryName), plugin.path)
        // Same file, explicit path: the same loaded plugin.
        let again = try KernelPlugin.load(path: plugin.path)
        XCTAssertTrue(again === plugin)
        let dir = (plugin.path as NSString).deletingLastPathComponent
        XCTAssertTrue(KernelPlugin.defaultSearchDirectories().contains(dir))
        XCTAssertNil(KernelPlugin.missingFunction(plugin.table))
    }

    func testMissingFileIsNotFound() {
        let path = NSTemporaryDirectory() + "no-such-plugin-\(UUID().uuidString).so"
        XCTAssertThrowsError(try KernelPlugin.load(path: path)) { error in
            guard case PluginError.notFound(let p) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, path)
            XCTAssertEqual(ExitStatus.of(error), .noInput)
            XCTAssertTrue("\(error)".contains(path))
        }
    }

    func testNonLibraryFileFailsToLoad() throws {
        let dir = TestPaths.scratch(self)
        let path = dir + "/not-a-library.so"
        writeFile(path, Array("hello".utf8))
        XCTAssertThrowsError(try KernelPlugin.load(path: path)) { error in
            guard case PluginError.loadFailed(let p, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, path)
            XCTAssertFalse(reason.isEmpty)
        }
    }

    func testLibraryWithoutEntryIsMissingSymbol() throws {
        let candidates = ["/usr/lib/x86_64-linux-gnu/libzstd.so.1", "/usr/lib/aarch64-linux-gnu/libzstd.so.1",
                          "/lib/x86_64-linux-gnu/libzstd.so.1", "/usr/lib64/libzstd.so.1", "/usr/lib/libzstd.so.1",
                          "/opt/homebrew/lib/libzstd.1.dylib", "/usr/local/lib/libzstd.1.dylib"]
        guard let lib = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw XCTSkip("no system libzstd found")
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: lib)) { error in
            guard case PluginError.missingSymbol(let p, let s) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, lib)
            XCTAssertEqual(s, "opc_plugin_entry")
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
            XCTAssertTrue("\(error)".contains(lib))
        }
    }

    /// Builds tiny fake plugins with cc and checks the loader's validation of the table.
    func testBadTablesAreRejected() throws {
        let cc = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang", "/usr/local/bin/cc"]
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let cc else { throw XCTSkip("no C compiler (cc) available") }
        let dir = TestPaths.scratch(self)
        let source = dir + "/fake.c"
        try """
        #include "opc_plugin.h"
        #include <stddef.h>
        #ifndef VERSION
        #define VERSION OPC_PLUGIN_ABI_VERSION
        #endif
        #ifndef SIZE
        #define SIZE sizeof(opc_plugin_v1)
        #endif
        #ifndef NULLIFY
        #define NULLIFY
        #endif
        #ifndef RET
        #define RET (&t)
        #endif
        static int dummy(void) { return -4; }
        static opc_plugin_v1 t;
        __attribute__((visibility("default")))
        const opc_plugin_v1 *opc_plugin_entry(uint32_t v) {
            (void)v;
            t.abi_version = VERSION; t.struct_size = SIZE; t.name = "fake"; t.description = "test";
            int (**f)(void) = (int (**)(void))(void *)&t.create;
            size_t n = (sizeof t - offsetof(opc_plugin_v1, create)) / sizeof *f;
            for (size_t i = 0; i < n; i++) f[i] = dummy;
            NULLIFY
            return RET;
        }
        """.write(toFile: source, atomically: true, encoding: .utf8)
        let include = TestPaths.repoRoot + "/Sources/COpConvertPluginABI/include"
        func build(_ name: String, _ defines: [String]) throws -> String {
            let out = dir + "/\(name).so"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: cc)
            p.arguments = ["-shared", "-fPIC", "-O0", "-I", include] + defines + ["-o", out, source]
            try p.run()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "cc \(name)")
            return out
        }
        let good = try build("fake_good", [])
        let v999 = try build("fake_v999", ["-DVERSION=999"])
        let null = try build("fake_null", ["-DRET=NULL"])
        let small = try build("fake_small", ["-DSIZE=24"])
        let incomplete = try build("fake_incomplete", ["-DNULLIFY=t.softmax_xent=0;"])

        // A complete fake table loads; its kernels fail cleanly (dummy returns OPC_E_UNSUPPORTED).
        let fake = try KernelPlugin.load(path: good)
        XCTAssertEqual(fake.name, "fake")

        XCTAssertThrowsError(try KernelPlugin.load(path: v999)) { error in
            guard case PluginError.abiMismatch(let p, let expected, let found) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, v999)
            XCTAssertEqual(expected, 1)
            XCTAssertEqual(found, 999)
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
            XCTAssertTrue("\(error)".contains("999"), "\(error)")
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: null)) { error in
            guard case PluginError.abiMismatch(_, 1, nil) = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: small)) { error in
            guard case PluginError.invalidTable(let p, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, small)
            XCTAssertTrue(reason.contains("struct_size"), reason)
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: incomplete)) { error in
            guard case PluginError.incomplete(let p, let function) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(p, incomplete)
            XCTAssertEqual(function, "softmax_xent")
            XCTAssertTrue("\(error)".contains("softmax_xent"))
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
        }
    }

    // MARK: - Memory

    func testMemoryRoundTrip() throws {
        let ctx = try context()
        let b = try ctx.alloc(count: 13)
        XCTAssertEqual(try ctx.download(b), [Float](repeating: 0, count: 13), "alloc is zero-filled")
        XCTAssertEqual(Int(bitPattern: b.pointer) % 64, 0, "64-byte aligned")
        var rng = RNG(state: 1)
        let values = rng.floats(13)
        try ctx.upload(values, to: b)
        XCTAssertEqual(try ctx.download(b), values)

        // Slices: byte-offset views; writes through them land in the parent.
        let s = b.slice(offset: 5, count: 4)
        XCTAssertTrue(s.isSlice)
        XCTAssertEqual(try ctx.download(s), Array(values[5..<9]))
        try ctx.fill(s, with: 2.5)
        var want = values
        for i in 5..<9 { want[i] = 2.5 }
        XCTAssertEqual(try ctx.download(b), want)
        XCTAssertEqual(try ctx.download(s.slice(offset: 1, count: 2)), [2.5, 2.5])

        // copy: device to device, into a slice of another buffer; overlapping copy too.
        let c = try ctx.alloc(count: 20)
        try ctx.copy(from: b, to: c.slice(offset: 7, count: 13))
        XCTAssertEqual(try ctx.download(c), [Float](repeating: 0, count: 7) + want)
        try ctx.copy(from: c.slice(offset: 7, count: 10), to: c.slice(offset: 9, count: 11))
        XCTAssertEqual(Array(try ctx.download(c)[9..<19]), Array(want[0..<10]))

        // Raw bytes and int64 labels.
        let raw = try ctx.allocBytes(7)
        try [UInt8](arrayLiteral: 1, 2, 3, 4, 5, 6, 7).withUnsafeBytes { try ctx.upload(bytes: $0, to: raw) }
        XCTAssertEqual(try ctx.downloadBytes(raw), [1, 2, 3, 4, 5, 6, 7])
        let labels = try ctx.uploadLabels([3, -1, 1 << 40])
        XCTAssertEqual(labels.count, 3)
        XCTAssertEqual(labels.elementSize, 8)
        let lb = try ctx.downloadBytes(labels)
        let back = lb.withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
        XCTAssertEqual(back, [3, -1, 1 << 40])
        let empty = try ctx.alloc(count: 0)
        XCTAssertEqual(try ctx.download(empty), [])

        // Host-side checks: nothing reaches the plugin.
        XCTAssertThrowsError(try ctx.upload(rng.floats(14), to: b)) { error in
            guard case PluginError.invalidArgument = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try ctx.download(raw)) { error in
            guard case PluginError.invalidArgument = error else { return XCTFail("\(error)") }
        }
    }

    /// The plugin validates its arguments itself (a host bypassing the Swift checks).
    func testPluginValidatesArguments() throws {
        let ctx = try context()
        let f = ctx.fns, raw = ctx.raw
        let a = try ctx.alloc(count: 16)
        XCTAssertEqual(Int(f.gemm!(raw, 0, 0, -1, 2, 2, 1, a.pointer, 2, a.pointer, 2, 0, a.pointer, 2)), OPC_E_INVALID)
        XCTAssertTrue(ctx.lastError.contains("negative"), ctx.lastError)
        XCTAssertEqual(Int(f.gemm!(raw, 0, 0, 2, 2, 3, 1, a.pointer, 2, a.pointer, 2, 0, a.pointer, 2)), OPC_E_INVALID)
        XCTAssertTrue(ctx.lastError.contains("lda"), ctx.lastError)
        XCTAssertEqual(Int(f.axpy!(raw, 4, 1, nil, a.pointer)), OPC_E_INVALID)
        XCTAssertTrue(ctx.lastError.contains("NULL"), ctx.lastError)
        XCTAssertEqual(Int(f.axpy!(raw, 0, 1, nil, nil)), OPC_OK, "nothing to do: NULL is fine")
        XCTAssertEqual(ctx.lastError, "", "success clears last_error")
        XCTAssertEqual(Int(f.row_norms!(raw, 2, -3, a.pointer, a.pointer)), OPC_E_INVALID)
        XCTAssertEqual(Int(f.sum_squares!(raw, 4, a.pointer, nil)), OPC_E_INVALID)
        XCTAssertEqual(Int(f.free!(raw, nil)), OPC_OK)
        var p: UnsafeMutableRawPointer?
        XCTAssertEqual(Int(f.alloc!(raw, 0, &p)), OPC_OK)
        XCTAssertNotNil(p)
        XCTAssertEqual(Int(f.free!(raw, p)), OPC_OK)
        XCTAssertEqual(Int(f.create!(nil, 0)), OPC_E_INVALID)
        XCTAssertEqual(f.entryCheck(), true)
    }

    // MARK: - gemm

    func testGemmAllTransposesWithStridesAndSlices() throws {
        let ctx = try context()
        var rng = RNG(state: 42)
        let (m, n, k) = (7, 5, 9)
        for transA in [false, true] {
            for transB in [false, true] {
                let (aRows, aCols) = transA ? (k, m) : (m, k)
                let (bRows, bCols) = transB ? (n, k) : (k, n)
                let (lda, ldb, ldc) = (aCols + 3, bCols + 2, n + 1)
                // Each matrix lives at an odd offset inside a larger buffer.
                let (offA, offB, offC) = (3, 5, 1)
                let aHost = rng.floats(offA + aRows * lda + 2)
                let bHost = rng.floats(offB + bRows * ldb + 1)
                let cHost = rng.floats(offC + m * ldc + 4)
                let aBuf = try upload(ctx, aHost), bBuf = try upload(ctx, bHost), cBuf = try upload(ctx, cHost)
                let (alpha, beta): (Float, Float) = (0.75, -0.5)
                try ctx.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                             a: aBuf.slice(offset: offA, count: aRows * lda), lda: lda,
                             b: bBuf.slice(offset: offB, count: bRows * ldb), ldb: ldb, beta: beta,
                             c: cBuf.slice(offset: offC, count: m * ldc), ldc: ldc)
                var want = cHost.map(Double.init)
                for i in 0..<m {
                    for j in 0..<n {
                        var s = 0.0
                        for p in 0..<k {
                            let av = transA ? aHost[offA + p * lda + i] : aHost[offA + i * lda + p]
                            let bv = transB ? bHost[offB + j * ldb + p] : bHost[offB + p * ldb + j]
                            s += Double(av) * Double(bv)
                        }
                        want[offC + i * ldc + j] = Double(alpha) * s + Double(beta) * Double(cHost[offC + i * ldc + j])
                    }
                }
                // Also checks that padding columns and the bytes around C are untouched.
                assertClose(try ctx.download(cBuf), want, "gemm transA=\(transA) transB=\(transB)")
            }
        }
        // beta == 0 overwrites C without reading it (NaN in C does not propagate).
        let a = try upload(ctx, rng.floats(6)), b = try upload(ctx, rng.floats(6))
        let c = try upload(ctx, [Float](repeating: .nan, count: 4))
        try ctx.gemm(transA: false, transB: false, m: 2, n: 2, k: 3, alpha: 1, a: a, lda: 3, b: b, ldb: 2, beta: 0, c: c, ldc: 2)
        XCTAssertTrue(try ctx.download(c).allSatisfy(\.isFinite))
        // k == 0: C = beta * C.
        let c2 = try upload(ctx, [1, 2, 3, 4])
        try ctx.gemm(transA: false, transB: false, m: 2, n: 2, k: 0, alpha: 1, a: a, lda: 1, b: b, ldb: 2, beta: 3, c: c2, ldc: 2)
        XCTAssertEqual(try ctx.download(c2), [3, 6, 9, 12])
        // A matrix that does not fit its buffer is refused on the host.
        XCTAssertThrowsError(try ctx.gemm(transA: false, transB: false, m: 2, n: 2, k: 4, alpha: 1, a: a, lda: 4,
                                          b: b, ldb: 2, beta: 0, c: c, ldc: 2)) { error in
            guard case PluginError.invalidArgument(let f, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(f, "gemm")
        }
    }

    // MARK: - Element-wise

    func testElementwiseKernels() throws {
        let ctx = try context()
        var rng = RNG(state: 7)
        let n = 101
        var xs = rng.floats(n, scale: 3)
        xs[0] = 0; xs[1] = -0.0
        let ys = rng.floats(n)
        let x = try upload(ctx, xs), y = try upload(ctx, ys)

        try ctx.axpy(alpha: -1.5, x: x, y: y)
        assertClose(try ctx.download(y), zip(xs, ys).map { Double($1) - 1.5 * Double($0) }, "axpy")

        try ctx.scale(y, by: 0.25)
        assertClose(try ctx.download(y), zip(xs, ys).map { (Double($1) - 1.5 * Double($0)) * 0.25 }, "scale")

        let r = try ctx.alloc(count: n)
        try ctx.reluForward(x: x, y: r)
        XCTAssertEqual(try ctx.download(r), xs.map { $0 > 0 ? $0 : 0 })

        let dys = rng.floats(n)
        let dy = try upload(ctx, dys), dx = try ctx.alloc(count: n)
        try ctx.reluBackward(x: x, dy: dy, dx: dx)
        let wantDx = zip(xs, dys).map { $0 > 0 ? $1 : 0 }
        XCTAssertEqual(try ctx.download(dx), wantDx)
        XCTAssertEqual(try ctx.download(dx)[0], 0, "relu'(0) = 0")
        // In place (dx aliases dy), on an odd-offset slice.
        try ctx.reluBackward(x: x.slice(offset: 3, count: 50), dy: dy.slice(offset: 3, count: 50),
                             dx: dy.slice(offset: 3, count: 50))
        let inPlace = try ctx.download(dy)
        XCTAssertEqual(Array(inPlace[3..<53]), Array(wantDx[3..<53]))
        XCTAssertEqual(Array(inPlace[53...]), Array(dys[53...]))
        // relu forward in place.
        try ctx.reluForward(x, into: x)
        XCTAssertEqual(try ctx.download(x), xs.map { $0 > 0 ? $0 : 0 })
    }

    // MARK: - Row operations

    func testRowKernels() throws {
        let ctx = try context()
        var rng = RNG(state: 11)
        let (rows, cols) = (9, 13)
        let xs = rng.floats(rows * cols), vs = rng.floats(cols), ss = rng.floats(rows), bs = rng.floats(rows * cols)
        func ref(_ i: Int, _ j: Int) -> Double { Double(xs[i * cols + j]) }

        let x = try upload(ctx, xs), v = try upload(ctx, vs)
        try ctx.addRowVector(rows: rows, cols: cols, v: v, x: x)
        assertClose(try ctx.download(x), (0..<rows * cols).map { Double(xs[$0]) + Double(vs[$0 % cols]) }, "add_row_vector")

        let x0 = try upload(ctx, xs)
        let outs = rng.floats(cols)
        let out = try upload(ctx, outs)
        try ctx.sumRows(rows: rows, cols: cols, x: x0, beta: 0.5, out: out)
        assertClose(try ctx.download(out),
                    (0..<cols).map { j in 0.5 * Double(outs[j]) + (0..<rows).reduce(0.0) { $0 + ref($1, j) } }, "sum_rows beta")
        try ctx.fill(out, with: .nan)
        try ctx.sumRows(rows: rows, cols: cols, x: x0, out: out)
        assertClose(try ctx.download(out), (0..<cols).map { j in (0..<rows).reduce(0.0) { $0 + ref($1, j) } }, "sum_rows")

        let norms = try ctx.alloc(count: rows)
        try ctx.rowNorms(rows: rows, cols: cols, x: x0, out: norms)
        assertClose(try ctx.download(norms),
                    (0..<rows).map { i in (0..<cols).reduce(0.0) { $0 + ref(i, $1) * ref(i, $1) }.squareRoot() }, "row_norms")

        let b = try upload(ctx, bs), dots = try ctx.alloc(count: rows)
        try ctx.rowDots(rows: rows, cols: cols, a: x0, b: b, out: dots)
        assertClose(try ctx.download(dots),
                    (0..<rows).map { i in (0..<cols).reduce(0.0) { $0 + ref(i, $1) * Double(bs[i * cols + $1]) } }, "row_dots")

        let s = try upload(ctx, ss)
        try ctx.scaleRows(rows: rows, cols: cols, s: s, x: x0)
        assertClose(try ctx.download(x0), (0..<rows * cols).map { Double(xs[$0]) * Double(ss[$0 / cols]) }, "scale_rows")

        // Row ops on slices at odd offsets.
        let big = try upload(ctx, [Float](repeating: 1, count: 3) + xs)
        try ctx.rowNorms(rows: rows, cols: cols, x: big.slice(offset: 3, count: rows * cols), out: norms)
        assertClose(try ctx.download(norms),
                    (0..<rows).map { i in (0..<cols).reduce(0.0) { $0 + ref(i, $1) * ref(i, $1) }.squareRoot() }, "row_norms slice")
        XCTAssertThrowsError(try ctx.rowNorms(rows: rows + 1, cols: cols, x: x0, out: norms))
    }

    // MARK: - Loss

    /// Double-precision reference: mean loss, dlogits, correct count.
    private func xentReference(_ logits: [Float], _ labels: [Int64], rows: Int, classes: Int)
        -> (loss: Double, grad: [Double], correct: Int) {
        var loss = 0.0, correct = 0
        var grad = [Double](repeating: 0, count: rows * classes)
        for i in 0..<rows {
            let row = logits[(i * classes)..<((i + 1) * classes)].map(Double.init)
            let mx = row.max()!
            let lse = mx + log(row.reduce(0.0) { $0 + exp($1 - mx) })
            let label = Int(labels[i])
            loss += lse - row[label]
            if row.firstIndex(of: mx)! == label { correct += 1 }
            for j in 0..<classes {
                grad[i * classes + j] = (exp(row[j] - lse) - (j == label ? 1 : 0)) / Double(rows)
            }
        }
        return (loss / Double(rows), grad, correct)
    }

    func testSoftmaxCrossEntropy() throws {
        let ctx = try context()
        var rng = RNG(state: 5)
        let (rows, classes) = (11, 7)
        var xs = rng.floats(rows * classes, scale: 4)
        for j in 0..<classes { xs[2 * classes + j] += 1000 }  // large logits: must stay finite
        var labels = (0..<rows).map { _ in Int64(rng.int(classes)) }
        // Row 0: a tie between classes 1 and 4, label 4 -> not correct (first max wins).
        for j in 0..<classes { xs[j] = -1 }
        xs[1] = 2; xs[4] = 2; labels[0] = 4
        // Row 1: argmax equals the label.
        xs[classes + 3] = 9; labels[1] = 3

        let logits = try upload(ctx, xs), lab = try ctx.uploadLabels(labels), dl = try ctx.alloc(count: rows * classes)
        let (loss, correct) = try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: logits, labels: lab, dlogits: dl)
        let want = xentReference(xs, labels, rows: rows, classes: classes)
        XCTAssertEqual(Double(loss), want.loss, accuracy: 1e-5 * max(1, want.loss))
        XCTAssertEqual(correct, want.correct)
        let grad = try ctx.download(dl)
        assertClose(grad, want.grad, tol: 1e-6, "dlogits")
        for i in 0..<rows {  // each gradient row sums to zero
            XCTAssertEqual(grad[(i * classes)..<((i + 1) * classes)].reduce(0, +), 0, accuracy: 1e-6)
        }

        // Gradients against central finite differences of the plugin's own loss.
        let h: Float = 1e-2
        let scratch = try ctx.alloc(count: rows * classes)
        for idx in [0, 4, classes + 3, 3 * classes + 5, rows * classes - 1] {
            var plus = xs, minus = xs
            plus[idx] += h; minus[idx] -= h
            let up = try upload(ctx, plus), down = try upload(ctx, minus)
            let lp = try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: up, labels: lab, dlogits: scratch).loss
            let lm = try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: down, labels: lab, dlogits: scratch).loss
            let fd = (Double(lp) - Double(lm)) / Double(2 * h)
            XCTAssertEqual(fd, Double(grad[idx]), accuracy: 2e-3, "d loss / d logits[\(idx)]")
        }

        // In place: dlogits == logits.
        let inPlace = try upload(ctx, xs)
        let r2 = try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: inPlace, labels: lab, dlogits: inPlace)
        XCTAssertEqual(r2.loss, loss)
        XCTAssertEqual(r2.correct, correct)
        XCTAssertEqual(try ctx.download(inPlace), grad)

        // A label out of range: OPC_E_INVALID with a message; nothing written.
        for bad: Int64 in [Int64(classes), -1] {
            var badLabels = labels
            badLabels[6] = bad
            let badLab = try ctx.uploadLabels(badLabels)
            let untouched = try upload(ctx, [Float](repeating: 42, count: rows * classes))
            XCTAssertThrowsError(try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: logits,
                                                             labels: badLab, dlogits: untouched)) { error in
                guard case PluginError.kernelFailed(let f, let code, let message) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(f, "softmax_xent")
                XCTAssertEqual(code, OPC_E_INVALID)
                XCTAssertTrue(message.contains("label \(bad)") && message.contains("row 6"), message)
                XCTAssertEqual(ExitStatus.of(error), .failure)
                XCTAssertTrue("\(error)".contains("OPC_E_INVALID"), "\(error)")
            }
            XCTAssertEqual(try ctx.download(untouched), [Float](repeating: 42, count: rows * classes))
        }
        // Labels must be an int64 buffer.
        XCTAssertThrowsError(try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: logits, labels: logits, dlogits: dl))
    }

    func testSumSquares() throws {
        let ctx = try context()
        var rng = RNG(state: 9)
        for n in [0, 1, 3, 1001] {
            let xs = rng.floats(n, scale: 10)
            let got = try ctx.sumSquares(try upload(ctx, xs))
            let want = xs.reduce(0.0) { $0 + Double($1) * Double($1) }
            XCTAssertEqual(got, want, accuracy: 1e-12 * max(1, want), "n=\(n)")
        }
        let big = try upload(ctx, rng.floats(40))
        XCTAssertEqual(try ctx.sumSquares(big.slice(offset: 17, count: 5)),
                       try ctx.download(big)[17..<22].reduce(0.0) { $0 + Double($1) * Double($1) }, accuracy: 1e-12)
    }

    // MARK: - Optimizer

    func testAdamWMatchesTorchFormula() throws {
        let ctx = try context()
        var rng = RNG(state: 3)
        let n = 37
        let (lr, b1, b2, eps, wd): (Float, Float, Float, Float, Float) = (1e-2, 0.9, 0.999, 1e-8, 0.1)
        var p = rng.floats(n).map(Double.init), m = [Double](repeating: 0, count: n), v = m
        let pBuf = try upload(ctx, p.map(Float.init))
        let gBuf = try ctx.alloc(count: n), mBuf = try ctx.alloc(count: n), vBuf = try ctx.alloc(count: n)
        for t in 1...3 {
            let g = rng.floats(n, scale: Float(t))
            try ctx.upload(g, to: gBuf)
            try ctx.adamw(p: pBuf, g: gBuf, m: mBuf, v: vBuf, lr: lr, beta1: b1, beta2: b2, eps: eps, weightDecay: wd, step: t)
            // torch.optim.AdamW (single-tensor, amsgrad=False), in double.
            let bc1 = 1 - pow(Double(b1), Double(t)), bc2 = 1 - pow(Double(b2), Double(t))
            for i in 0..<n {
                let gi = Double(g[i])
                p[i] *= 1 - Double(lr) * Double(wd)
                m[i] = Double(b1) * m[i] + (1 - Double(b1)) * gi
                v[i] = Double(b2) * v[i] + (1 - Double(b2)) * gi * gi
                let denom = v[i].squareRoot() / bc2.squareRoot() + Double(eps)
                p[i] -= Double(lr) / bc1 * m[i] / denom
            }
            assertClose(try ctx.download(pBuf), p, tol: 1e-5, "p after step \(t)")
            assertClose(try ctx.download(mBuf), m, tol: 1e-5, "m after step \(t)")
            assertClose(try ctx.download(vBuf), v, tol: 1e-5, "v after step \(t)")
        }
        // The count-based overload (a prefix) and step 0.
        XCTAssertThrowsError(try ctx.adamw(count: n, p: pBuf, g: gBuf, m: mBuf, v: vBuf, lr: lr, beta1: b1, beta2: b2,
                                           eps: eps, weightDecay: wd, t: 0)) { error in
            guard case PluginError.kernelFailed("adamw", OPC_E_INVALID, let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("t=0"), message)
        }
        XCTAssertThrowsError(try ctx.adamw(count: n + 1, p: pBuf, g: gBuf, m: mBuf, v: vBuf, lr: lr, beta1: b1, beta2: b2,
                                           eps: eps, weightDecay: wd, t: 4))
    }

    // MARK: - Contexts

    func testContextsAndBuffersOutliveEachOther() throws {
        let plugin = try KernelPlugin.load(path: nil)
        var slice: DeviceBuffer?
        do {
            let ctx = try plugin.makeContext()
            let b = try ctx.alloc(count: 8)
            try ctx.upload([1, 2, 3, 4, 5, 6, 7, 8], to: b)
            slice = b.slice(offset: 2, count: 3)
        }
        // The slice keeps its parent buffer and the context alive.
        let s = try XCTUnwrap(slice)
        XCTAssertEqual(try s.context.download(s), [3, 4, 5])
    }
}

private extension opc_plugin_v1 {
    /// The table the loader accepted is the one the entry hands out.
    func entryCheck() -> Bool { abi_version == OPC_PLUGIN_ABI_VERSION && Int(struct_size) >= MemoryLayout<opc_plugin_v1>.size }
}
