import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// The OP hypernetwork of one generated tensor group: v = W2 ReLU(W1 z + c1) + c2, with
/// its parameters and work buffers on the device. Initialised as the paper's appendix C.1:
/// W1, W2 Kaiming-uniform, the rows of W2 in `zeroRows` zero (they predict B), biases 0.
final class HyperMLP {
    let prefix: String
    let zDim: Int, hidden: Int, outputs: Int
    let z: Parameter, w1: Parameter, c1: Parameter, w2: Parameter, c2: Parameter
    let pre: DeviceBuffer, h: DeviceBuffer, dh: DeviceBuffer
    let v: DeviceBuffer, dv: DeviceBuffer

    var parameters: [Parameter] { [z, w1, c1, w2, c2] }

    init(_ ctx: KernelContext, prefix: String, zDim: Int, hidden: Int, outputs: Int, zeroRows: Range<Int>, rng: inout SeededRandom) throws {
        self.prefix = prefix
        self.zDim = zDim
        self.hidden = hidden
        self.outputs = outputs
        var w2Init = rng.kaimingUniform(count: outputs * hidden, fanIn: hidden)
        for i in (zeroRows.lowerBound * hidden)..<(zeroRows.upperBound * hidden) { w2Init[i] = 0 }
        z = try Parameter(ctx, name: prefix + ".z", shape: [zDim], initial: (0..<zDim).map { _ in rng.normal() })
        w1 = try Parameter(ctx, name: prefix + ".fc1.weight", shape: [hidden, zDim], initial: rng.kaimingUniform(count: hidden * zDim, fanIn: zDim))
        c1 = try Parameter(ctx, name: prefix + ".fc1.bias", shape: [hidden], initial: [Float](repeating: 0, count: hidden))
        w2 = try Parameter(ctx, name: prefix + ".fc2.weight", shape: [outputs, hidden], initial: w2Init)
        c2 = try Parameter(ctx, name: prefix + ".fc2.bias", shape: [outputs], initial: [Float](repeating: 0, count: outputs))
        pre = try ctx.alloc(count: hidden)
        h = try ctx.alloc(count: hidden)
        dh = try ctx.alloc(count: hidden)
        v = try ctx.alloc(count: outputs)
        dv = try ctx.alloc(count: outputs)
    }

    /// h = ReLU(W1 z + c1); v = W2 h + c2.
    func forward(_ ctx: KernelContext) throws {
        try ctx.copy(from: c1.value, to: pre)
        try ctx.gemm(transA: false, transB: false, m: hidden, n: 1, k: zDim, alpha: 1, a: w1.value, lda: zDim, b: z.value, ldb: 1, beta: 1, c: pre, ldc: 1)
        try ctx.reluForward(pre, into: h)
        try ctx.copy(from: c2.value, to: v)
        try ctx.gemm(transA: false, transB: false, m: outputs, n: 1, k: hidden, alpha: 1, a: w2.value, lda: hidden, b: h, ldb: 1, beta: 1, c: v, ldc: 1)
    }

    /// From dv: gradients of W2, c2, and dh = W2ᵀ dv (a head on h may add to dh next).
    func backwardOutput(_ ctx: KernelContext) throws {
        try ctx.gemm(transA: false, transB: false, m: outputs, n: hidden, k: 1, alpha: 1, a: dv, lda: 1, b: h, ldb: hidden, beta: 0, c: w2.grad, ldc: hidden)
        try ctx.copy(from: dv, to: c2.grad)
        try ctx.gemm(transA: true, transB: false, m: hidden, n: 1, k: outputs, alpha: 1, a: w2.value, lda: hidden, b: dv, ldb: 1, beta: 0, c: dh, ldc: 1)
    }

    /// From dh: gradients of W1, c1 and z.
    func backwardHidden(_ ctx: KernelContext) throws {
        try ctx.reluBackward(x: pre, dy: dh, dx: dh)
        try ctx.gemm(transA: false, transB: false, m: hidden, n: zDim, k: 1, alpha: 1, a: dh, lda: 1, b: z.value, ldb: zDim, beta: 0, c: w1.grad, ldc: zDim)
        try ctx.copy(from: dh, to: c1.grad)
        try ctx.gemm(transA: true, transB: false, m: zDim, n: 1, k: hidden, alpha: 1, a: w1.value, lda: zDim, b: dh, ldb: 1, beta: 0, c: z.grad, ldc: 1)
    }
}
