import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI
import Foundation

/// One case of `opconvert plugin check`.
public struct ConformanceCase: Codable, Sendable {
    public var name: String
    public var ok: Bool
    /// Why it failed ("" when it passed, or a note such as the compiler's summary).
    public var detail: String

    /// "ok   gemm NT 17x33x65 lda+3" / "FAIL gemm ... (max rel err 3e-3 at [4,7])".
    public var line: String {
        (ok ? "ok   " : "FAIL ") + name + (detail.isEmpty ? "" : " (\(detail))")
    }
}

/// The result of `opconvert plugin check`.
public struct ConformanceReport: Codable, Sendable {
    public var plugin: String
    public var path: String
    public var abiVersion: Int
    public var device: String
    public var passed: Int
    public var failed: Int
    public var cases: [ConformanceCase]
    /// Lines that are not cases (e.g. "the CPU plugin compiles nothing").
    public var notes: [String]
}

/// A conformance suite for any kernel plugin: every ABI function (v1 and, on a v2
/// plugin, v2) against references computed in double precision on the host, on empty,
/// tiny, odd and large shapes, all transposes, padded strides, pointers offset 4 bytes into
/// an allocation, the aliasing the header allows, error returns and determinism.
///
/// Tolerances (per case, relative to the double reference): gemm and the row reductions
/// 2·sqrt(k)·eps32 times the sum of |terms| (a bound random rounding stays well inside);
/// element-wise kernels and AdamW 2–4 eps32 of the operands' magnitudes; the loss 1e-5;
/// sum_squares 1e-9 (it is accumulated in double). Everything else is exact. Products
/// above 4M multiply-adds are checked on every 8th row and the last (all of C's padding).
public struct PluginConformance {
    public let plugin: KernelPlugin
    public let device: Int
    /// The table calls go through (tests pass an altered copy to plant a bug).
    let table: opc_plugin

    public init(plugin: KernelPlugin, device: Int = 0) {
        self.init(plugin: plugin, device: device, table: plugin.table)
    }

    package init(plugin: KernelPlugin, device: Int, table: opc_plugin) {
        self.plugin = plugin
        self.device = device
        self.table = table
    }

    /// The compile_kernels targets of --compile-only.
    public static let compileTargets = ["sm_80", "sm_90"]

    /// Runs the suite. `compileOnly`: only compile_kernels for sm_80 and sm_90 (no context,
    /// no device). `onCase` hears each case as it finishes (for printing as it goes).
    public func run(compileOnly: Bool = false, deviceLabel: String? = nil,
                    onCase: @escaping (ConformanceCase) -> Void = { _ in }) -> ConformanceReport {
        var report = ConformanceReport(plugin: plugin.name, path: plugin.path, abiVersion: Int(plugin.abiVersion),
                                       device: deviceLabel ?? "\(plugin.name):\(device)", passed: 0, failed: 0,
                                       cases: [], notes: [])
        let suite = Suite(table: table, onCase: onCase)
        if compileOnly {
            for target in Self.compileTargets {
                let result = plugin.hasVersion2 ? compile(target) : KernelCompilation(code: Int(OPC_E_UNSUPPORTED), log: "")
                if result.unsupported {
                    let why = result.log.isEmpty ? "plugin \(plugin.name) serves ABI version 1 (no compile_kernels)" : result.log
                    if !report.notes.contains(why) { report.notes.append(why) }
                    continue
                }
                suite.record("compile_kernels \(target)", result.ok ? nil : (result.log.isEmpty ? PluginError.codeName(result.code) : result.log),
                             note: result.ok ? result.log : "")
            }
        } else {
            if plugin.hasVersion2 {
                suite.discovery(device: device)
                for target in Self.compileTargets.prefix(1) {
                    let result = compile(target)
                    suite.record("compile_kernels \(target)",
                                 result.ok || (result.unsupported && !result.log.isEmpty) ? nil
                                    : "\(PluginError.codeName(result.code)): \(result.log.isEmpty ? "no log" : result.log)",
                                 note: result.log)
                }
            } else {
                report.notes.append("plugin \(plugin.name) serves ABI version 1: probe, device_info, create_with_options, compile_kernels, divide and multiply are not checked")
            }
            if !plugin.hasVersion3 {
                report.notes.append("plugin \(plugin.name) serves ABI version \(plugin.abiVersion): the transformer kernels (v3) are not checked")
            }
            do {
                let ctx = try KernelContext(plugin: plugin, table: table, device: device, threads: 0, allowTF32: false,
                                            cacheDirectory: nil)
                suite.all(ctx)
            } catch {
                suite.record("create context on device \(device)", "\(error)")
            }
        }
        report.cases = suite.cases
        report.passed = suite.cases.filter(\.ok).count
        report.failed = suite.cases.count - report.passed
        return report
    }

    private func compile(_ target: String) -> KernelCompilation {
        guard let compile = table.compile_kernels else { return plugin.compileKernels(target: target) }
        let (code, log) = KernelPlugin.withMessage { buf, len in target.withCString { compile($0, buf, len) } }
        return KernelCompilation(code: Int(code), log: log)
    }
}

// MARK: - The cases

/// The suite's state: the cases so far. A class so the case helpers can append.
final class Suite {
    let t: opc_plugin
    let onCase: (ConformanceCase) -> Void
    var cases: [ConformanceCase] = []
    var rng = SplitMix(state: 0x0C0F_FEE5)
    static let eps = Double(Float.ulpOfOne)

    init(table: opc_plugin, onCase: @escaping (ConformanceCase) -> Void) {
        t = table
        self.onCase = onCase
    }

    /// `failure` nil: passed.
    func record(_ name: String, _ failure: String?, note: String = "") {
        let c = ConformanceCase(name: name, ok: failure == nil, detail: failure ?? note)
        cases.append(c)
        onCase(c)
    }

    /// Runs `body` as one case: it returns nil (pass) or why it failed; a thrown error fails it.
    func check(_ name: String, _ body: () throws -> String?) {
        do { record(name, try body()) } catch { record(name, "\(error)") }
    }

    func all(_ ctx: KernelContext) {
        memory(ctx)
        gemm(ctx)
        elementwise(ctx)
        rows(ctx)
        softmax(ctx)
        sumSquares(ctx)
        adamw(ctx)
        errors(ctx)
        determinism(ctx)
        if ctx.supportsTransformerKernels { transformer(ctx) }
    }

    // MARK: Helpers

    /// `values` in a fresh buffer; `offset`: starting 4 bytes into its allocation.
    func device(_ ctx: KernelContext, _ values: [Float], offset: Bool) throws -> DeviceBuffer {
        let whole = try ctx.alloc(count: max(1, values.count + (offset ? 1 : 0)))
        let b = whole.slice(offset: offset ? 1 : 0, count: values.count)
        if !values.isEmpty { try ctx.upload(values, to: b) }
        return b
    }

    func random(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in rng.float(scale) } }

    /// Compares `got` with `want` element by element; `tol(i)` is the allowed absolute error.
    /// nil when all fit, else the worst element.
    func compare(_ got: [Float], _ want: [Double], tol: (Int) -> Double) -> String? {
        guard got.count == want.count else { return "\(got.count) values, \(want.count) expected" }
        var worst: (ratio: Double, i: Int)?
        for i in 0..<got.count {
            let err = abs(Double(got[i]) - want[i])
            let ratio = want[i].isNaN ? (got[i].isNaN ? 0 : .infinity) : (err.isNaN ? .infinity : err / max(tol(i), 1e-300))
            if ratio > 1, ratio > (worst?.ratio ?? 1) { worst = (ratio, i) }
        }
        guard let worst else { return nil }
        let i = worst.i
        let rel = abs(Double(got[i]) - want[i]) / max(abs(want[i]), 1e-30)
        return "max rel err \(short(rel)) at [\(i)]: got \(got[i]), want \(want[i]), tol \(short(tol(i)))"
    }

    func short(_ x: Double) -> String { String(format: "%.2g", x) }

    func code(_ c: Int32, _ want: Int = OPC_OK, _ what: String) -> String? {
        Int(c) == want ? nil : "\(what) returned \(PluginError.codeName(Int(c))), expected \(PluginError.codeName(Int(want)))"
    }

    // MARK: Discovery (v2)

    func discovery(device: Int) {
        guard let probe = t.probe, let info = t.device_info, let create = t.create_with_options else { return }
        var count: Int32 = -1
        check("probe") {
            var why = [CChar](repeating: 0x5A, count: 64)
            let c = why.withUnsafeMutableBufferPointer { probe(&count, $0.baseAddress, 16) }
            if Int(c) != OPC_OK { return "probe returned \(PluginError.codeName(Int(c))): \(String(cString: Array(why.prefix(16)) + [0]))" }
            if count < 1 { return "probe succeeded with device_count \(count)" }
            if !why.prefix(16).contains(0) { return "why is not NUL-terminated within why_len" }
            if why[16...].contains(where: { $0 != 0x5A }) { return "probe wrote past why_len" }
            return nil
        }
        check("probe with NULL device_count and why") {
            code(probe(nil, nil, 0), OPC_OK, "probe(NULL, NULL, 0)")
        }
        let dev = Int32(clamping: device)
        check("device_info \(device)") {
            var d = opc_device_info()
            d.struct_size = UInt32(MemoryLayout<opc_device_info>.size)
            let (c, why) = KernelPlugin.withMessage { info(dev, &d, $0, $1) }
            if Int(c) != OPC_OK { return "device_info returned \(PluginError.codeName(Int(c))): \(why)" }
            let name = withUnsafeBytes(of: d.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.isEmpty { return "empty name" }
            if withUnsafeBytes(of: d.name, { !$0.contains(0) }) { return "name is not NUL-terminated" }
            if d.multiprocessors < 1 { return "multiprocessors is \(d.multiprocessors)" }
            if d.total_memory_bytes == 0 { return "total_memory_bytes is 0" }
            if d.compute_major < 0 || d.compute_minor < 0 { return "negative compute capability" }
            return nil
        }
        check("device_info writes only struct_size bytes") {
            let size = MemoryLayout<opc_device_info>.size, small = 12  // struct_size, compute_major, compute_minor
            var raw = [UInt8](repeating: 0xA5, count: size)
            raw.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(small), as: UInt32.self) }
            let c = raw.withUnsafeMutableBytes { b in
                info(dev, b.baseAddress!.assumingMemoryBound(to: opc_device_info.self), nil, 0)
            }
            if Int(c) != OPC_OK { return "device_info returned \(PluginError.codeName(Int(c)))" }
            if raw[small...].contains(where: { $0 != 0xA5 }) { return "wrote past struct_size \(small)" }
            return nil
        }
        check("device_info rejects bad indices") {
            var d = opc_device_info()
            d.struct_size = UInt32(MemoryLayout<opc_device_info>.size)
            for bad in [Int32(-1), max(count, 1), Int32.max] where Int(info(bad, &d, nil, 0)) == OPC_OK {
                return "device_info(\(bad)) succeeded (probe counts \(count))"
            }
            return nil
        }
        check("create_with_options rejects a device past the count") {
            var o = opc_create_options()
            o.struct_size = UInt32(MemoryLayout<opc_create_options>.size)
            o.device = max(count, 1)
            var ctx: OpaquePointer? = OpaquePointer(bitPattern: 0x10)
            let (c, why) = KernelPlugin.withMessage { create(&o, &ctx, $0, $1) }
            if Int(c) == OPC_OK { t.destroy?(ctx); return "device \(o.device) accepted" }
            if ctx != nil { return "*out is not NULL after a failure" }
            if why.isEmpty { return "no why text" }
            return nil
        }
        check("create_with_options NULL options and short struct") {
            var ctx: OpaquePointer?
            if let e = code(create(nil, &ctx, nil, 0), OPC_OK, "create_with_options(NULL)") { return e }
            if ctx == nil { return "no context" }
            t.destroy?(ctx)
            var o = opc_create_options()
            o.struct_size = 8  // struct_size and device only
            o.device = dev
            ctx = nil
            if let e = code(create(&o, &ctx, nil, 0), OPC_OK, "create_with_options(struct_size 8)") { return e }
            t.destroy?(ctx)
            t.destroy?(nil)
            return nil
        }
    }

    // MARK: Memory

    func memory(_ ctx: KernelContext) {
        let f = t, raw = ctx.raw
        for bytes in [1, 3, 64, 1000, 1 << 20] {
            check("alloc \(bytes) bytes: zero-filled, 64-byte aligned") {
                let b = try ctx.allocBytes(bytes)
                if Int(bitPattern: b.pointer) % 64 != 0 { return "pointer \(b.pointer) is not 64-byte aligned" }
                let back = try ctx.downloadBytes(b)
                if let i = back.firstIndex(where: { $0 != 0 }) { return "byte \(i) is \(back[i])" }
                return nil
            }
        }
        check("alloc(0) twice: distinct pointers") {
            var p: UnsafeMutableRawPointer?, q: UnsafeMutableRawPointer?
            if let e = code(f.alloc!(raw, 0, &p), OPC_OK, "alloc(0)") { return e }
            defer { _ = f.free!(raw, p); _ = f.free!(raw, q) }
            if let e = code(f.alloc!(raw, 0, &q), OPC_OK, "alloc(0)") { return e }
            if p == nil || q == nil { return "NULL pointer" }
            return p == q ? "the same pointer twice" : nil
        }
        check("free(NULL)") { code(f.free!(raw, nil), OPC_OK, "free(NULL)") }
        check("upload/download 1001 floats +4B") {
            let v = random(1001)
            let b = try device(ctx, v, offset: true)
            return try ctx.download(b) == v ? nil : "round trip differs"
        }
        check("copy overlapping forward and backward (memmove)") {
            let v = random(100)
            let b = try device(ctx, v, offset: true)
            try ctx.copy(from: b.slice(offset: 0, count: 60), to: b.slice(offset: 10, count: 60))
            var want = v
            for i in 0..<60 { want[10 + i] = v[i] }
            if try ctx.download(b) != want { return "forward overlap differs" }
            try ctx.copy(from: b.slice(offset: 20, count: 50), to: b.slice(offset: 5, count: 50))
            let before = want
            for i in 0..<50 { want[5 + i] = before[20 + i] }
            return try ctx.download(b) == want ? nil : "backward overlap differs"
        }
        check("fill 1001 floats +4B") {
            let b = try device(ctx, random(1003), offset: true)
            try ctx.fill(b.slice(offset: 1, count: 1001), with: -2.5)
            let got = try ctx.download(b)
            if got[1...1001].contains(where: { $0 != -2.5 }) { return "not filled" }
            return got[0] == -2.5 || got[1002] == -2.5 ? "wrote outside [1, 1002)" : nil
        }
        check("zero sizes accept NULL (upload, download, copy, fill)") {
            for (c, what) in [(f.upload!(raw, nil, nil, 0), "upload"), (f.download!(raw, nil, nil, 0), "download"),
                              (f.copy!(raw, nil, nil, 0), "copy"), (f.fill!(raw, nil, 1, 0), "fill")] {
                if let e = code(c, OPC_OK, what) { return e }
            }
            return nil
        }
    }

    // MARK: gemm

    func gemm(_ ctx: KernelContext) {
        let shapes = [(0, 0, 0), (1, 1, 1), (3, 5, 7), (17, 33, 65), (0, 5, 7), (5, 0, 7), (5, 7, 0), (1, 64, 1), (40, 1, 9)]
        for (m, n, k) in shapes {
            for ta in [false, true] {
                for tb in [false, true] {
                    for padded in [false, true] {
                        gemmCase(ctx, ta, tb, m, n, k, padded: padded, alpha: 0.75, beta: k == 0 ? 0.5 : -0.5)
                    }
                    if m > 0 && n > 0 {
                        gemmCase(ctx, ta, tb, m, n, k, padded: true, alpha: 1.25, beta: 0)  // beta 0: NaN in C unread
                    }
                }
            }
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            gemmCase(ctx, ta, tb, 256, 384, 320, padded: ta == tb, alpha: 1, beta: 0)
        }
    }

    func gemmCase(_ ctx: KernelContext, _ ta: Bool, _ tb: Bool, _ m: Int, _ n: Int, _ k: Int, padded: Bool,
                  alpha: Float, beta: Float) {
        let (aRows, aCols) = ta ? (k, m) : (m, k)
        let (bRows, bCols) = tb ? (n, k) : (k, n)
        let lda = max(1, aCols) + (padded ? 3 : 0), ldb = max(1, bCols) + (padded ? 5 : 0), ldc = max(1, n) + (padded ? 2 : 0)
        let name = "gemm \(ta ? "T" : "N")\(tb ? "T" : "N") \(m)x\(n)x\(k)" + (padded ? " lda+3 ldb+5 ldc+2 +4B" : "")
            + (beta == 0 ? " beta=0 NaN C" : " alpha=\(alpha) beta=\(beta)")
        check(name) {
            let a = random(aRows * lda), b = random(bRows * ldb)
            var c = random(m * ldc)
            if beta == 0 { c = [Float](repeating: .nan, count: c.count) }
            let da = try device(ctx, a, offset: padded), db = try device(ctx, b, offset: padded), dc = try device(ctx, c, offset: padded)
            try ctx.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: alpha, a: da, lda: lda, b: db, ldb: ldb,
                         beta: beta, c: dc, ldc: ldc)
            let got = try ctx.download(dc)
            var want = c.map(Double.init), tol = [Double](repeating: 0, count: c.count)
            // Large products: every 8th row and the last (the reference dominates the run time).
            let checkedRows = m * n * k > 4_000_000 ? Array(stride(from: 0, to: m, by: 8)) + [m - 1] : Array(0..<m)
            a.withUnsafeBufferPointer { A in
                b.withUnsafeBufferPointer { B in
                    for i in checkedRows {
                        for j in 0..<n {
                            var s = 0.0, sa = 0.0
                            for l in 0..<k {
                                let x = Double(ta ? A[l * lda + i] : A[i * lda + l]), y = Double(tb ? B[j * ldb + l] : B[l * ldb + j])
                                s += x * y
                                sa += abs(x * y)
                            }
                            let old = Double(c[i * ldc + j])
                            want[i * ldc + j] = Double(alpha) * s + (beta == 0 ? 0 : Double(beta) * old)
                            tol[i * ldc + j] = 2 * Double(k).squareRoot() * Self.eps * abs(Double(alpha)) * sa
                                + 2 * Self.eps * (beta == 0 ? 0 : abs(Double(beta) * old)) + 1e-30
                        }
                    }
                }
            }
            // Padding between rows (j >= n) must be left as it was: tol 0 keeps it exact.
            if checkedRows.count < m {
                let rowsSet = Set(checkedRows)
                for i in 0..<m where !rowsSet.contains(i) {
                    for j in 0..<ldc { want[i * ldc + j] = Double(got[i * ldc + j]); if j >= n { want[i * ldc + j] = Double(c[i * ldc + j]) } }
                }
            }
            return compare(got, want) { tol[$0] }
        }
    }

    // MARK: Element-wise

    func elementwise(_ ctx: KernelContext) {
        let eps = Self.eps
        for n in [1, 1001] {
            let off = n > 1, tag = "\(n)" + (off ? " +4B" : "")
            check("axpy \(tag)") {
                let x = random(n), y = random(n)
                let dx = try device(ctx, x, offset: off), dy = try device(ctx, y, offset: off)
                try ctx.axpy(alpha: -0.7, x: dx, y: dy)
                return compare(try ctx.download(dy), zip(x, y).map { Double($1) - 0.7 * Double($0) }) { i in
                    2 * eps * (abs(Double(y[i])) + abs(0.7 * Double(x[i]))) }
            }
            check("scale \(tag)") {
                let x = random(n)
                let dx = try device(ctx, x, offset: off)
                try ctx.scale(dx, by: 1.3)
                return compare(try ctx.download(dx), x.map { 1.3 * Double($0) }) { i in 2 * eps * abs(1.3 * Double(x[i])) }
            }
            for inPlace in [false, true] {
                check("relu_forward \(tag)" + (inPlace ? " in place" : "")) {
                    let x = random(n)
                    let dx = try device(ctx, x, offset: off), dy = inPlace ? dx : try device(ctx, random(n), offset: off)
                    try ctx.reluForward(x: dx, y: dy)
                    return compare(try ctx.download(dy), x.map { Double(max($0, 0)) }) { _ in 0 }
                }
                check("relu_backward \(tag)" + (inPlace ? " dx=dy" : "")) {
                    let x = random(n), g = random(n)
                    let dx = try device(ctx, x, offset: off), dg = try device(ctx, g, offset: off)
                    let out = inPlace ? dg : try device(ctx, random(n), offset: off)
                    try ctx.reluBackward(x: dx, dy: dg, dx: out)
                    return compare(try ctx.download(out), zip(x, g).map { $0 > 0 ? Double($1) : 0 }) { _ in 0 }
                }
            }
            guard ctx.hasElementwiseV2 else { continue }
            let ops: [(String, (Double, Double) -> Double)] = [("divide", { $0 / $1 }), ("multiply", { $0 * $1 })]
            for (op, fn) in ops {
                for alias in ["", " out=a", " out=b"] {
                    check("\(op) \(tag)\(alias)") {
                        let a = random(n), b = random(n).map { $0 + ($0 < 0 ? -0.25 : 0.25) }  // |b| >= 0.25
                        let da = try device(ctx, a, offset: off), db = try device(ctx, b, offset: off)
                        let out = alias == " out=a" ? da : alias == " out=b" ? db : try device(ctx, random(n), offset: off)
                        if op == "divide" { try ctx.divide(da, by: db, into: out) } else { try ctx.multiply(da, by: db, into: out) }
                        let want = zip(a, b).map { fn(Double($0), Double($1)) }
                        return compare(try ctx.download(out), want) { i in eps * abs(want[i]) }
                    }
                }
            }
        }
        if ctx.hasElementwiseV2 {
            check("divide and multiply n=0 with NULL") {
                if let e = code(t.divide!(ctx.raw, 0, nil, nil, nil), OPC_OK, "divide(0)") { return e }
                return code(t.multiply!(ctx.raw, 0, nil, nil, nil), OPC_OK, "multiply(0)")
            }
        }
        check("element-wise n=0 with NULL") {
            let f = t, raw = ctx.raw
            for (c, what) in [(f.axpy!(raw, 0, 1, nil, nil), "axpy"), (f.scale!(raw, 0, 2, nil), "scale"),
                              (f.relu_forward!(raw, 0, nil, nil), "relu_forward"), (f.relu_backward!(raw, 0, nil, nil, nil), "relu_backward")] {
                if let e = code(c, OPC_OK, what) { return e }
            }
            return nil
        }
    }

    // MARK: Row operations

    func rows(_ ctx: KernelContext) {
        let eps = Self.eps
        for (r, c) in [(1, 1), (3, 5), (17, 65), (300, 257)] {
            let tag = "\(r)x\(c) +4B"
            check("add_row_vector \(tag)") {
                let x = random(r * c), v = random(c)
                let dx = try device(ctx, x, offset: true), dv = try device(ctx, v, offset: true)
                try ctx.addRowVector(rows: r, cols: c, v: dv, x: dx)
                let want = (0..<(r * c)).map { Double(x[$0]) + Double(v[$0 % c]) }
                return compare(try ctx.download(dx), want) { i in eps * (abs(Double(x[i])) + abs(Double(v[i % c]))) }
            }
            for beta in [Float(0), 0.5] {
                check("sum_rows \(tag) beta=\(beta)" + (beta == 0 ? " NaN out" : "")) {
                    let x = random(r * c), o = beta == 0 ? [Float](repeating: .nan, count: c) : random(c)
                    let dx = try device(ctx, x, offset: true), dout = try device(ctx, o, offset: true)
                    try ctx.sumRows(rows: r, cols: c, x: dx, beta: beta, out: dout)
                    var want = [Double](repeating: 0, count: c), abssum = [Double](repeating: 0, count: c)
                    for j in 0..<c {
                        want[j] = beta == 0 ? 0 : Double(beta) * Double(o[j])
                        abssum[j] = abs(want[j])
                        for i in 0..<r { want[j] += Double(x[i * c + j]); abssum[j] += abs(Double(x[i * c + j])) }
                    }
                    return compare(try ctx.download(dout), want) { j in 2 * Double(r + 1).squareRoot() * eps * abssum[j] + 1e-30 }
                }
            }
            check("row_norms \(tag)") {
                let x = random(r * c)
                let dx = try device(ctx, x, offset: true), dout = try device(ctx, random(r), offset: true)
                try ctx.rowNorms(rows: r, cols: c, x: dx, out: dout)
                let want = (0..<r).map { i in (0..<c).reduce(0.0) { $0 + Double(x[i * c + $1]) * Double(x[i * c + $1]) }.squareRoot() }
                return compare(try ctx.download(dout), want) { i in 2 * Double(c).squareRoot() * eps * want[i] + 1e-30 }
            }
            check("scale_rows \(tag)") {
                let x = random(r * c), s = random(r)
                let dx = try device(ctx, x, offset: true), ds = try device(ctx, s, offset: true)
                try ctx.scaleRows(rows: r, cols: c, s: ds, x: dx)
                let want = (0..<(r * c)).map { Double(x[$0]) * Double(s[$0 / c]) }
                return compare(try ctx.download(dx), want) { i in eps * abs(want[i]) }
            }
            check("row_dots \(tag)") {
                let a = random(r * c), b = random(r * c)
                let da = try device(ctx, a, offset: true), db = try device(ctx, b, offset: true), dout = try device(ctx, random(r), offset: true)
                try ctx.rowDots(rows: r, cols: c, a: da, b: db, out: dout)
                var want = [Double](repeating: 0, count: r), abssum = want
                for i in 0..<r {
                    for j in 0..<c { let p = Double(a[i * c + j]) * Double(b[i * c + j]); want[i] += p; abssum[i] += abs(p) }
                }
                return compare(try ctx.download(dout), want) { i in 2 * Double(c).squareRoot() * eps * abssum[i] + 1e-30 }
            }
        }
        check("row operations with zero rows or columns accept NULL") {
            let f = t, raw = ctx.raw
            for (c, what) in [(f.add_row_vector!(raw, 0, 5, nil, nil), "add_row_vector(0x5)"), (f.add_row_vector!(raw, 5, 0, nil, nil), "add_row_vector(5x0)"),
                              (f.sum_rows!(raw, 5, 0, nil, 0, nil), "sum_rows(5x0)"), (f.row_norms!(raw, 0, 5, nil, nil), "row_norms(0x5)"),
                              (f.scale_rows!(raw, 0, 5, nil, nil), "scale_rows(0x5)"), (f.row_dots!(raw, 0, 5, nil, nil, nil), "row_dots(0x5)")] {
                if let e = code(c, OPC_OK, what) { return e }
            }
            return nil
        }
        check("sum_rows 0 rows beta=0 zeroes out") {
            let dout = try device(ctx, [Float](repeating: .nan, count: 7), offset: true)
            let x = try ctx.alloc(count: 1)
            try ctx.sumRows(rows: 0, cols: 7, x: x, beta: 0, out: dout)
            return compare(try ctx.download(dout), [Double](repeating: 0, count: 7)) { _ in 0 }
        }
    }

    // MARK: Loss

    /// The double-precision reference of softmax_xent: dlogits, mean loss, argmax hits.
    func softmaxReference(_ x: [Float], _ labels: [Int64], rows: Int, classes: Int) -> ([Double], Double, Int) {
        var d = [Double](repeating: 0, count: x.count), total = 0.0, correct = 0
        for i in 0..<rows {
            let row = x[(i * classes)..<((i + 1) * classes)].map(Double.init)
            let mx = row.max()!, arg = row.firstIndex(of: mx)!
            let lse = mx + log(row.reduce(0) { $0 + exp($1 - mx) })
            total += lse - row[Int(labels[i])]
            if arg == Int(labels[i]) { correct += 1 }
            for j in 0..<classes { d[i * classes + j] = (exp(row[j] - lse) - (j == Int(labels[i]) ? 1 : 0)) / Double(rows) }
        }
        return (d, rows > 0 ? total / Double(rows) : 0, correct)
    }

    func softmax(_ ctx: KernelContext) {
        for (r, c) in [(1, 1), (3, 5), (17, 33), (64, 1000)] {
            for inPlace in [false, true] {
                check("softmax_xent \(r)x\(c) +4B" + (inPlace ? " in place" : "")) {
                    var x = random(r * c, scale: 4)
                    if c > 1 { for j in 0..<c { x[j] = 0.5 } }  // a tie in row 0: the first max counts
                    let labels = (0..<r).map { i in i == 0 ? Int64(0) : Int64(rng.int(c)) }
                    let dx = try device(ctx, x, offset: true)
                    let dl = try ctx.uploadLabels(labels)
                    let out = inPlace ? dx : try device(ctx, random(r * c), offset: true)
                    let (loss, correct) = try ctx.softmaxCrossEntropy(rows: r, classes: c, logits: dx, labels: dl, dlogits: out)
                    let (want, wantLoss, wantCorrect) = softmaxReference(x, labels, rows: r, classes: c)
                    if abs(Double(loss) - wantLoss) > 1e-5 * max(1, abs(wantLoss)) { return "loss \(loss), want \(wantLoss)" }
                    if correct != wantCorrect { return "correct \(correct), want \(wantCorrect)" }
                    return compare(try ctx.download(out), want) { i in 1e-5 * abs(want[i]) + 1e-7 / Double(r) }
                }
            }
        }
        check("softmax_xent labels at 8-byte offset, NULL loss and correct") {
            let (r, c) = (5, 4)
            let x = random(r * c)
            let labels: [Int64] = [9, 3, 0, 1, 2, 3]  // slot 0 is padding
            let dl = try ctx.uploadLabels(labels).slice(offset: 1, count: r)
            let dx = try device(ctx, x, offset: true)
            if let e = code(t.softmax_xent!(ctx.raw, Int32(r), Int32(c), dx.pointer, dl.pointer, dx.pointer, nil, nil), OPC_OK, "softmax_xent") { return e }
            let (want, _, _) = softmaxReference(x, Array(labels[1...]), rows: r, classes: c)
            return compare(try ctx.download(dx), want) { i in 1e-5 * abs(want[i]) + 1e-7 }
        }
        check("softmax_xent 0 rows") { code(t.softmax_xent!(ctx.raw, 0, 3, nil, nil, nil, nil, nil), OPC_OK, "softmax_xent(0 rows)") }
        for bad in [Int64(4), -1] {
            check("softmax_xent label \(bad) of 4 classes: OPC_E_INVALID, nothing written") {
                let x = random(12)
                let dx = try device(ctx, x, offset: false), out = try device(ctx, [Float](repeating: 7, count: 12), offset: false)
                let dl = try ctx.uploadLabels([1, bad, 2])
                var loss: Float = 42, correct: Int64 = 42
                if let e = code(t.softmax_xent!(ctx.raw, 3, 4, dx.pointer, dl.pointer, out.pointer, &loss, &correct), OPC_E_INVALID, "softmax_xent") { return e }
                if try ctx.download(out) != [Float](repeating: 7, count: 12) { return "dlogits written" }
                if try ctx.download(dx) != x { return "logits written" }
                return loss != 42 || correct != 42 ? "loss/correct written" : nil
            }
        }
    }

    // MARK: sum_squares, AdamW

    func sumSquares(_ ctx: KernelContext) {
        for n in [1, 1001, 1 << 20] {
            check("sum_squares \(n) +4B") {
                let x = random(n)
                let got = try ctx.sumSquares(try device(ctx, x, offset: true))
                let want = x.reduce(0.0) { $0 + Double($1) * Double($1) }
                return abs(got - want) <= 1e-9 * want ? nil : "got \(got), want \(want) (rel err \(short(abs(got - want) / want)), tol 1e-9)"
            }
        }
        check("sum_squares n=0 with NULL x") {
            var out = 5.0
            if let e = code(t.sum_squares!(ctx.raw, 0, nil, &out), OPC_OK, "sum_squares(0)") { return e }
            return out == 0 ? nil : "got \(out) for no elements"
        }
    }

    func adamw(_ ctx: KernelContext) {
        for (beta1, n) in [(Float(0.9), 1), (0.9, 1001), (0.4, 1001)] {
            check("adamw \(n) +4B beta1=\(beta1), steps 1-3") {
                let (lr, beta2, eps, wd): (Float, Float, Float, Float) = (1e-2, 0.999, 1e-8, 0.1)
                var p = random(n), m = [Float](repeating: 0, count: n), v = m
                let dp = try device(ctx, p, offset: true), dm = try device(ctx, m, offset: true), dv = try device(ctx, v, offset: true)
                for step in 1...3 {
                    let g = random(n)
                    let dg = try device(ctx, g, offset: true)
                    try ctx.adamw(count: n, p: dp, g: dg, m: dm, v: dv, lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: wd, t: Int64(step))
                    // The header's formula, evaluated in f32 as torch does.
                    let bc1 = 1 - pow(Double(beta1), Double(step)), bc2 = 1 - pow(Double(beta2), Double(step))
                    let decay = Float(1 - Double(lr) * Double(wd)), stepSize = Float(Double(lr) / bc1), bc2Sqrt = Float(bc2.squareRoot())
                    for i in 0..<n {
                        p[i] *= decay
                        m[i] += (1 - beta1) * (g[i] - m[i])
                        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
                        p[i] -= stepSize * m[i] / (v[i].squareRoot() / bc2Sqrt + eps)
                    }
                    // Relative to the terms' magnitudes: m = b1 m + (1-b1) g may cancel, and
                    // torch's lerp picks one of two formulas by weight.
                    let e4 = 4 * Self.eps
                    if let e = compare(try ctx.download(dp), p.map(Double.init), tol: { i in e4 * (abs(Double(p[i])) + 10 * Double(lr)) }) { return "step \(step) p: \(e)" }
                    if let e = compare(try ctx.download(dm), m.map(Double.init), tol: { i in e4 * (abs(Double(m[i])) + abs(Double(g[i]))) }) { return "step \(step) m: \(e)" }
                    if let e = compare(try ctx.download(dv), v.map(Double.init), tol: { i in e4 * (abs(Double(v[i])) + Double(g[i] * g[i])) + 1e-30 }) { return "step \(step) v: \(e)" }
                }
                return nil
            }
        }
        check("adamw t=0: OPC_E_INVALID, nothing written") {
            let p = random(8)
            let dp = try device(ctx, p, offset: false), g = try device(ctx, random(8), offset: false)
            let m = try ctx.alloc(count: 8), v = try ctx.alloc(count: 8)
            if let e = code(t.adamw!(ctx.raw, 8, dp.pointer, g.pointer, m.pointer, v.pointer, 1e-3, 0.9, 0.999, 1e-8, 0, 0), OPC_E_INVALID, "adamw(t=0)") { return e }
            return try ctx.download(dp) == p ? nil : "p written"
        }
    }

    // MARK: Error returns

    func errors(_ ctx: KernelContext) {
        let f = t, raw = ctx.raw
        guard let a = try? ctx.alloc(count: 64), let l = try? ctx.uploadLabels([0, 0]) else {
            record("error returns", "cannot allocate")
            return
        }
        let p = a.pointer
        // Host-side arguments get host memory, so a plugin that ignores a NULL check
        // still is not handed a device address to read on the host.
        let host = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 64)
        defer { host.deallocate() }
        let negative: [(String, () -> Int32)] = [
            ("gemm m=-1", { f.gemm!(raw, 0, 0, -1, 2, 2, 1, p, 2, p, 2, 0, p, 2) }),
            ("gemm k=-1", { f.gemm!(raw, 0, 0, 2, 2, -1, 1, p, 2, p, 2, 0, p, 2) }),
            ("gemm lda < k", { f.gemm!(raw, 0, 0, 2, 2, 3, 1, p, 2, p, 2, 0, p, 2) }),
            ("add_row_vector rows=-1", { f.add_row_vector!(raw, -1, 2, p, p) }),
            ("sum_rows cols=-1", { f.sum_rows!(raw, 2, -1, p, 0, p) }),
            ("row_norms rows=-1", { f.row_norms!(raw, -1, 2, p, p) }),
            ("scale_rows cols=-1", { f.scale_rows!(raw, 2, -1, p, p) }),
            ("row_dots rows=-1", { f.row_dots!(raw, -1, 2, p, p, p) }),
            ("softmax_xent rows=-1", { f.softmax_xent!(raw, -1, 2, p, l.pointer, p, nil, nil) }),
            ("softmax_xent 2 rows, 0 classes", { f.softmax_xent!(raw, 2, 0, p, l.pointer, p, nil, nil) }),
        ]
        var nulls: [(String, () -> Int32)] = [
            ("upload dst", { f.upload!(raw, nil, host, 4) }), ("upload src", { f.upload!(raw, p, nil, 4) }),
            ("download src", { f.download!(raw, host, nil, 4) }), ("download dst", { f.download!(raw, nil, p, 4) }), ("copy dst", { f.copy!(raw, nil, p, 4) }),
            ("fill x", { f.fill!(raw, nil, 1, 4) }), ("axpy x", { f.axpy!(raw, 4, 1, nil, p) }),
            ("scale x", { f.scale!(raw, 4, 1, nil) }), ("relu_forward y", { f.relu_forward!(raw, 4, p, nil) }),
            ("relu_backward dx", { f.relu_backward!(raw, 4, p, p, nil) }), ("gemm C", { f.gemm!(raw, 0, 0, 2, 2, 2, 1, p, 2, p, 2, 0, nil, 2) }),
            ("gemm A", { f.gemm!(raw, 0, 0, 2, 2, 2, 1, nil, 2, p, 2, 0, p, 2) }),
            ("row_norms out", { f.row_norms!(raw, 2, 2, p, nil) }), ("sum_squares out", { f.sum_squares!(raw, 4, p, nil) }),
            ("softmax_xent labels", { f.softmax_xent!(raw, 2, 2, p, nil, p, nil, nil) }),
            ("adamw g", { f.adamw!(raw, 4, p, nil, p, p, 1e-3, 0.9, 0.999, 1e-8, 0, 1) }),
            ("alloc out", { f.alloc!(raw, 4, nil) }),
        ]
        if let divide = f.divide, let multiply = f.multiply {
            nulls += [("divide out", { divide(raw, 4, p, p, nil) }), ("multiply a", { multiply(raw, 4, nil, p, p) })]
        }
        for (what, call) in negative {
            check("\(what): OPC_E_INVALID with last_error") {
                if let e = code(call(), OPC_E_INVALID, what) { return e }
                return ctx.lastError.isEmpty ? "last_error is empty" : nil
            }
        }
        check("NULL pointers with nonzero size: OPC_E_INVALID") {
            for (what, call) in nulls {
                if let e = code(call(), OPC_E_INVALID, what) { return e }
            }
            return nil
        }
        check("create(NULL out): OPC_E_INVALID") { code(f.create!(nil, 0), OPC_E_INVALID, "create(NULL)") }
        check("last_error is never NULL") { f.last_error!(raw) == nil ? "NULL" : nil }
    }

    // MARK: Determinism

    func determinism(_ ctx: KernelContext) {
        func twice(_ name: String, _ run: () throws -> [UInt8]) {
            check("deterministic: \(name)") { try run() == run() ? nil : "two identical calls gave different bytes" }
        }
        let (m, n, k) = (256, 384, 320)
        let a = random(m * k), b = random(k * n), x = random(64 * 1000, scale: 4)
        let labels = (0..<64).map { _ in Int64(rng.int(1000)) }
        let big = random(1 << 20)
        twice("gemm NN \(m)x\(n)x\(k)") {
            let da = try device(ctx, a, offset: false), db = try device(ctx, b, offset: false), dc = try ctx.alloc(count: m * n)
            try ctx.gemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: da, lda: k, b: db, ldb: n, beta: 0, c: dc, ldc: n)
            return try ctx.download(dc).bytes
        }
        twice("softmax_xent 64x1000") {
            let dx = try device(ctx, x, offset: false), dl = try ctx.uploadLabels(labels), out = try ctx.alloc(count: x.count)
            let (loss, correct) = try ctx.softmaxCrossEntropy(rows: 64, classes: 1000, logits: dx, labels: dl, dlogits: out)
            return try ctx.download(out).bytes + [loss].bytes + [Float(correct)].bytes
        }
        twice("sum_squares 1M") {
            let s = try ctx.sumSquares(try device(ctx, big, offset: false))
            return withUnsafeBytes(of: s) { [UInt8]($0) }
        }
        twice("row_norms and row_dots 1024x1024") {
            let da = try device(ctx, big, offset: false), out = try ctx.alloc(count: 1024)
            try ctx.rowNorms(rows: 1024, cols: 1024, x: da, out: out)
            var bytes = try ctx.download(out).bytes
            try ctx.rowDots(rows: 1024, cols: 1024, a: da, b: da, out: out)
            bytes += try ctx.download(out).bytes
            try ctx.sumRows(rows: 1024, cols: 1024, x: da, out: out)
            return bytes + (try ctx.download(out).bytes)
        }
    }
}

/// SplitMix64: the suite's deterministic inputs.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-scale, scale).
    mutating func float(_ scale: Float = 1) -> Float { Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) * scale }
    mutating func int(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

private extension Array where Element == Float {
    var bytes: [UInt8] { withUnsafeBytes { [UInt8]($0) } }
}
