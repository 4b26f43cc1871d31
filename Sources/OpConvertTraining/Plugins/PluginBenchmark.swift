import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

public struct BenchmarkOptions: Sendable {
    /// Square GEMM sizes n (n x n x n).
    public var squareSizes = [1024, 2048, 4096]
    /// LoRA-shaped GEMMs (m, n, k): the B·A update and a rank-16 product.
    public var loraShapes = [(4096, 4096, 16), (16, 4096, 4096)]
    /// Timed runs per case, after one warm-up.
    public var repeats = 10
    /// Elements of the element-wise kernel cases (adamw, axpy, divide).
    public var kernelElements = 16 << 20
    /// Rows x classes of the softmax_xent case.
    public var softmaxShape = (1024, 32000)
    public init() {}
}

public struct GemmTiming: Codable, Sendable {
    public var m: Int, n: Int, k: Int
    public var transA: Bool, transB: Bool
    public var repeats: Int
    public var medianSeconds: Double
    public var bestSeconds: Double
    /// 2mnk / median time.
    public var gflops: Double
}

public struct KernelTiming: Codable, Sendable {
    public var kernel: String
    public var shape: String
    public var repeats: Int
    public var medianSeconds: Double
    public var bestSeconds: Double
    /// Bytes the kernel must read and write / median time.
    public var gbPerSecond: Double
}

public struct BenchmarkReport: Codable, Sendable {
    public var plugin: String
    public var device: String
    public var tf32: Bool
    public var gemm: [GemmTiming]
    public var kernels: [KernelTiming]
    /// Cases left out (too large for the device's memory).
    public var skipped: [String]
}

/// `opconvert plugin bench`: GEMM throughput and a few kernel timings on one context.
/// Every timed call is followed by a 4-byte download, so the time covers the work on an
/// asynchronous (CUDA) device too. A benchmark, not a test: nothing is asserted.
public enum PluginBenchmark {
    public static func run(_ device: SelectedDevice, options o: BenchmarkOptions, allowTF32: Bool = false,
                           onLine: (String) -> Void = { _ in }) throws -> BenchmarkReport {
        let ctx = try device.makeContext(allowTF32: allowTF32)
        let memory = (try? device.plugin.deviceInfo(device.device).totalMemoryBytes) ?? 0
        // Leave room: use at most half the device's memory for one case's buffers.
        func fits(_ floats: Int) -> Bool { memory == 0 || UInt64(floats) * 4 <= memory / 2 }
        var report = BenchmarkReport(plugin: device.plugin.name, device: device.label, tf32: allowTF32, gemm: [], kernels: [], skipped: [])
        var sink = [UInt8](repeating: 0, count: 4)
        func sync(_ b: DeviceBuffer) throws {
            try sink.withUnsafeMutableBytes { try ctx.download(bytes: $0, from: b.slice(offset: 0, count: 1)) }
        }
        func time(_ body: () throws -> Void, syncOn b: DeviceBuffer) throws -> (median: Double, best: Double) {
            try body(); try sync(b)  // warm-up (and, on CUDA, any lazy setup)
            var times: [Double] = []
            for _ in 0..<max(1, o.repeats) {
                let start = DispatchTime.now().uptimeNanoseconds
                try body(); try sync(b)
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            times.sort()
            return (times[times.count / 2], times[0])
        }
        let shapes = o.squareSizes.map { ($0, $0, $0) } + o.loraShapes
        for (m, n, k) in shapes {
            guard fits(m * k + k * n + m * n) else { report.skipped.append("gemm \(m)x\(n)x\(k)"); continue }
            let a = try ctx.alloc(count: m * k), b = try ctx.alloc(count: k * n), c = try ctx.alloc(count: m * n)
            try ctx.fill(a, with: 0.5); try ctx.fill(b, with: 0.25)
            let t = try time({
                try ctx.gemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: n, beta: 0, c: c, ldc: n)
            }, syncOn: c)
            let g = GemmTiming(m: m, n: n, k: k, transA: false, transB: false, repeats: max(1, o.repeats), medianSeconds: t.median,
                               bestSeconds: t.best, gflops: 2 * Double(m) * Double(n) * Double(k) / t.median / 1e9)
            report.gemm.append(g)
            onLine(String(format: "gemm %5dx%5dx%5d  %9.1f GFLOP/s  (median %.3f ms, best %.3f ms)", m, n, k, g.gflops, t.median * 1e3, t.best * 1e3))
        }
        let n = o.kernelElements
        if fits(4 * n) {
            let p = try ctx.alloc(count: n), g = try ctx.alloc(count: n), m = try ctx.alloc(count: n), v = try ctx.alloc(count: n)
            try ctx.fill(p, with: 1); try ctx.fill(g, with: 0.01)
            var step: Int64 = 0
            record(&report, max(1, o.repeats), "adamw", "\(n)", bytes: 7 * 4 * n, try time({
                step += 1
                try ctx.adamw(count: n, p: p, g: g, m: m, v: v, lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, t: step)
            }, syncOn: p), onLine)
            record(&report, max(1, o.repeats), "axpy", "\(n)", bytes: 3 * 4 * n, try time({ try ctx.axpy(alpha: 1e-3, x: g, y: p) }, syncOn: p), onLine)
            if ctx.hasElementwiseV2 {
                try ctx.fill(m, with: 2)
                record(&report, max(1, o.repeats), "divide", "\(n)", bytes: 3 * 4 * n, try time({ try ctx.divide(p, by: m, into: v) }, syncOn: v), onLine)
            }
        } else {
            report.skipped.append("adamw/axpy/divide \(n)")
        }
        let (rows, classes) = o.softmaxShape
        if fits(2 * rows * classes) {
            let logits = try ctx.alloc(count: rows * classes), d = try ctx.alloc(count: rows * classes)
            try ctx.fill(logits, with: 0.1)
            let labels = try ctx.uploadLabels((0..<rows).map { Int64($0 % classes) })
            record(&report, max(1, o.repeats), "softmax_xent", "\(rows)x\(classes)", bytes: 2 * 4 * rows * classes, try time({
                _ = try ctx.softmaxCrossEntropy(rows: rows, classes: classes, logits: logits, labels: labels, dlogits: d)
            }, syncOn: d), onLine)
            record(&report, max(1, o.repeats), "row_norms", "\(rows)x\(classes)", bytes: 4 * rows * classes, try time({
                try ctx.rowNorms(rows: rows, cols: classes, x: logits, out: d)
            }, syncOn: d), onLine)
        } else {
            report.skipped.append("softmax_xent \(rows)x\(classes)")
        }
        return report
    }

    private static func record(_ report: inout BenchmarkReport, _ repeats: Int, _ kernel: String, _ shape: String, bytes: Int,
                               _ t: (median: Double, best: Double), _ onLine: (String) -> Void) {
        let k = KernelTiming(kernel: kernel, shape: shape, repeats: repeats, medianSeconds: t.median, bestSeconds: t.best,
                             gbPerSecond: Double(bytes) / t.median / 1e9)
        report.kernels.append(k)
        onLine(kernel.padding(toLength: 13, withPad: " ", startingAt: 0) + " " + shape.padding(toLength: 12, withPad: " ", startingAt: 0)
               + String(format: " %8.1f GB/s   (median %.3f ms, best %.3f ms)", k.gbPerSecond, t.median * 1e3, t.best * 1e3))
    }
}
