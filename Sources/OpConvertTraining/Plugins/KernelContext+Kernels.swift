import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI

/// Typed wrappers of the plugin kernels. Sizes are checked against the buffers on the host
/// first (PluginError.invalidArgument), so a host bug cannot make a kernel run off the end
/// of an allocation; plugin failures throw PluginError.kernelFailed with last_error's text.
extension KernelContext {
    // MARK: - Dense linear algebra

    /// C[m,n] = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when trans*.
    /// lda/ldb/ldc are row strides (elements) of the matrices as stored.
    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: DeviceBuffer, lda: Int, b: DeviceBuffer, ldb: Int,
                     beta: Float, c: DeviceBuffer, ldc: Int) throws {
        let f = "gemm"
        try requireF32(f, a, "A"); try requireF32(f, b, "B"); try requireF32(f, c, "C")
        let (m32, n32, k32) = (try int32(f, "m", m), try int32(f, "n", n), try int32(f, "k", k))
        let (lda32, ldb32, ldc32) = (try int32(f, "lda", lda), try int32(f, "ldb", ldb), try int32(f, "ldc", ldc))
        // Stored shapes: A is [m,k] or [k,m]; B is [k,n] or [n,k]; C is [m,n].
        let (aRows, aCols) = transA ? (k, m) : (m, k)
        let (bRows, bCols) = transB ? (n, k) : (k, n)
        try requireMatrix(f, "A", a, rows: aRows, cols: aCols, ld: lda, used: m > 0 && n > 0 && k > 0)
        try requireMatrix(f, "B", b, rows: bRows, cols: bCols, ld: ldb, used: m > 0 && n > 0 && k > 0)
        try requireMatrix(f, "C", c, rows: m, cols: n, ld: ldc, used: m > 0 && n > 0)
        try check(f, fns.gemm!(raw, transA ? 1 : 0, transB ? 1 : 0, m32, n32, k32, alpha,
                               a.pointer, lda32, b.pointer, ldb32, beta, c.pointer, ldc32))
    }

    /// A [rows, cols] matrix with row stride `ld` must fit in the buffer.
    private func requireMatrix(_ f: String, _ role: String, _ buf: DeviceBuffer, rows: Int, cols: Int, ld: Int,
                               used: Bool) throws {
        guard ld >= max(1, cols) else {
            throw PluginError.invalidArgument(function: f, reason: "ld\(role.lowercased())=\(ld) is less than \(max(1, cols))")
        }
        guard used else { return }
        let (span, overflow) = (rows - 1).multipliedReportingOverflow(by: ld)
        guard !overflow, span <= buf.count - cols else {
            throw PluginError.invalidArgument(function: f,
                reason: "\(role) [\(rows)x\(cols), stride \(ld)] does not fit its \(buf.count)-element buffer")
        }
    }

    // MARK: - Element-wise
    // n is the first operand's element count (use a slice for a prefix); the other buffers
    // must hold at least n elements and are used from their start.

    /// y += alpha * x
    public func axpy(alpha: Float, x: DeviceBuffer, y: DeviceBuffer) throws {
        try requireF32("axpy", x, "x"); try requireF32("axpy", y, "y")
        try requireAtLeast("axpy", y, x)
        try check("axpy", fns.axpy!(raw, x.count, alpha, x.pointer, y.pointer))
    }

    /// x *= alpha
    public func scale(_ x: DeviceBuffer, by alpha: Float) throws {
        try requireF32("scale", x)
        try check("scale", fns.scale!(raw, x.count, alpha, x.pointer))
    }

    /// y = max(x, 0); y may be x.
    public func reluForward(_ x: DeviceBuffer, into y: DeviceBuffer) throws { try reluForward(x: x, y: y) }

    /// y = max(x, 0); y may be x.
    public func reluForward(x: DeviceBuffer, y: DeviceBuffer) throws {
        try requireF32("relu_forward", x, "x"); try requireF32("relu_forward", y, "y")
        try requireAtLeast("relu_forward", y, x)
        try check("relu_forward", fns.relu_forward!(raw, x.count, x.pointer, y.pointer))
    }

    /// dx = dy where x > 0 else 0 (x: the pre-activation); dx may be dy.
    public func reluBackward(x: DeviceBuffer, dy: DeviceBuffer, dx: DeviceBuffer) throws {
        let f = "relu_backward"
        try requireF32(f, x, "x"); try requireF32(f, dy, "dy"); try requireF32(f, dx, "dx")
        try requireAtLeast(f, dy, x); try requireAtLeast(f, dx, x)
        try check(f, fns.relu_backward!(raw, x.count, x.pointer, dy.pointer, dx.pointer))
    }

    /// `b` must hold at least as many elements as `n` (the operand that sets the count).
    private func requireAtLeast(_ f: String, _ b: DeviceBuffer, _ n: DeviceBuffer) throws {
        guard b.count >= n.count else {
            throw PluginError.invalidArgument(function: f, reason: "a \(b.count)-element buffer where \(n.count) elements are needed")
        }
    }

    /// Whether divide/multiply run on the device (a v2 plugin); a v1 plugin's caller does
    /// them on the host.
    public var hasElementwiseV2: Bool { fns.divide != nil && fns.multiply != nil }

    /// out = a / b, element-wise over a's count (v2); out may be a or b.
    public func divide(_ a: DeviceBuffer, by b: DeviceBuffer, into out: DeviceBuffer) throws {
        try binary("divide", fns.divide, a, b, out)
    }

    /// out = a * b, element-wise over a's count (v2); out may be a or b.
    public func multiply(_ a: DeviceBuffer, by b: DeviceBuffer, into out: DeviceBuffer) throws {
        try binary("multiply", fns.multiply, a, b, out)
    }

    private func binary(_ f: String, _ kernel: (@convention(c) (OpaquePointer?, Int, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Int32)?,
                        _ a: DeviceBuffer, _ b: DeviceBuffer, _ out: DeviceBuffer) throws {
        guard let kernel else { throw PluginError.pluginTooOld(plugin: plugin.name, function: f) }
        try requireF32(f, a, "a"); try requireF32(f, b, "b"); try requireF32(f, out, "out")
        try requireAtLeast(f, b, a); try requireAtLeast(f, out, a)
        try check(f, kernel(raw, a.count, a.pointer, b.pointer, out.pointer))
    }

    // MARK: - Row operations on a contiguous [rows, cols] matrix

    /// x[i,:] += v
    public func addRowVector(rows: Int, cols: Int, v: DeviceBuffer, x: DeviceBuffer) throws {
        let f = "add_row_vector"
        let (r, c) = try shape(f, rows, cols)
        try requireF32(f, v, "v", atLeast: cols)
        try requireF32(f, x, "x", atLeast: rows * cols)
        try check(f, fns.add_row_vector!(raw, r, c, v.pointer, x.pointer))
    }

    /// out[j] = beta * out[j] + sum_i x[i,j] (beta == 0 overwrites out).
    public func sumRows(rows: Int, cols: Int, x: DeviceBuffer, beta: Float = 0, out: DeviceBuffer) throws {
        let f = "sum_rows"
        let (r, c) = try shape(f, rows, cols)
        try requireF32(f, x, "x", atLeast: rows * cols)
        try requireF32(f, out, "out", atLeast: cols)
        try check(f, fns.sum_rows!(raw, r, c, x.pointer, beta, out.pointer))
    }

    /// out[i] = ||x[i,:]||_2
    public func rowNorms(rows: Int, cols: Int, x: DeviceBuffer, out: DeviceBuffer) throws {
        let f = "row_norms"
        let (r, c) = try shape(f, rows, cols)
        try requireF32(f, x, "x", atLeast: rows * cols)
        try requireF32(f, out, "out", atLeast: rows)
        try check(f, fns.row_norms!(raw, r, c, x.pointer, out.pointer))
    }

    /// x[i,:] *= s[i]
    public func scaleRows(rows: Int, cols: Int, s: DeviceBuffer, x: DeviceBuffer) throws {
        let f = "scale_rows"
        let (r, c) = try shape(f, rows, cols)
        try requireF32(f, s, "s", atLeast: rows)
        try requireF32(f, x, "x", atLeast: rows * cols)
        try check(f, fns.scale_rows!(raw, r, c, s.pointer, x.pointer))
    }

    /// out[i] = a[i,:] . b[i,:]
    public func rowDots(rows: Int, cols: Int, a: DeviceBuffer, b: DeviceBuffer, out: DeviceBuffer) throws {
        let f = "row_dots"
        let (r, c) = try shape(f, rows, cols)
        try requireF32(f, a, "a", atLeast: rows * cols)
        try requireF32(f, b, "b", atLeast: rows * cols)
        try requireF32(f, out, "out", atLeast: rows)
        try check(f, fns.row_dots!(raw, r, c, a.pointer, b.pointer, out.pointer))
    }

    private func shape(_ f: String, _ rows: Int, _ cols: Int) throws -> (Int32, Int32) {
        let r = try int32(f, "rows", rows), c = try int32(f, "cols", cols)
        guard !rows.multipliedReportingOverflow(by: cols).overflow else {
            throw PluginError.invalidArgument(function: f, reason: "\(rows)x\(cols) overflows")
        }
        return (r, c)
    }

    // MARK: - Loss

    /// Mean softmax cross-entropy of logits[rows, classes] against int64 `labels` (from
    /// uploadLabels). Writes dlogits = (softmax - onehot) / rows (dlogits may be logits);
    /// returns the mean loss and how many rows' argmax (first max) equals the label.
    public func softmaxCrossEntropy(rows: Int, classes: Int, logits: DeviceBuffer, labels: DeviceBuffer,
                                    dlogits: DeviceBuffer) throws -> (loss: Float, correct: Int) {
        let f = "softmax_xent"
        let (r, c) = try shape(f, rows, classes)
        try requireF32(f, logits, "logits", atLeast: rows * classes)
        try requireF32(f, dlogits, "dlogits", atLeast: rows * classes)
        try requireSame(labels)
        guard labels.elementSize == 8 else {
            throw PluginError.invalidArgument(function: f, reason: "labels must be int64 (uploadLabels), not \(labels.elementSize)-byte elements")
        }
        try requireCount(f, labels, atLeast: rows, "labels")
        var loss: Float = 0
        var correct: Int64 = 0
        try check(f, fns.softmax_xent!(raw, r, c, logits.pointer, labels.pointer, dlogits.pointer, &loss, &correct))
        return (loss, Int(correct))
    }

    /// Sum of squares of all elements, accumulated in double.
    public func sumSquares(_ x: DeviceBuffer) throws -> Double {
        try requireF32("sum_squares", x)
        var out = 0.0
        try check("sum_squares", fns.sum_squares!(raw, x.count, x.pointer, &out))
        return out
    }

    // MARK: - Optimizer

    /// One AdamW step (as torch.optim.AdamW) in place on all of p, m, v; `step` counts from 1.
    public func adamw(p: DeviceBuffer, g: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer,
                      lr: Float, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8,
                      weightDecay: Float = 0.01, step: Int) throws {
        try adamw(count: p.count, p: p, g: g, m: m, v: v, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
                  weightDecay: weightDecay, t: Int64(step))
    }

    /// One AdamW step on the first `count` elements of p, g, m, v; `t` counts from 1.
    public func adamw(count: Int, p: DeviceBuffer, g: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer,
                      lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, t: Int64) throws {
        let f = "adamw"
        guard count >= 0 else { throw PluginError.invalidArgument(function: f, reason: "negative count \(count)") }
        for (b, role) in [(p, "p"), (g, "g"), (m, "m"), (v, "v")] {
            try requireF32(f, b, role)
            try requireCount(f, b, atLeast: count, role)
        }
        try check(f, fns.adamw!(raw, count, p.pointer, g.pointer, m.pointer, v.pointer,
                                lr, beta1, beta2, eps, weightDecay, t))
    }
}
