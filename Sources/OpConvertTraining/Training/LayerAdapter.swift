import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// The adapter on one layer during training, for every method:
/// - LoRA/DoRA: A, B (and m) are parameters.
/// - OP-LoRA/OP-DoRA: A and B are generated each step by the module's MLP,
///   v = W2 ReLU(W1 z + c1) + c2 (and m = Wm h + cm + offset); the MLP is trained.
/// The layer's effective weight is formed explicitly (W + s·B·A, DoRA-rescaled), so the
/// network forward/backward treats every method the same.
package final class LayerAdapter {
    let layer: Int
    package let name: String
    let method: AdapterMethod
    let rank: Int
    let scale: Float
    let outF: Int, inF: Int
    let hidden: Int
    /// Parameters in a fixed order (checkpoint and optimizer order).
    package let parameters: [Parameter]

    // LoRA/DoRA parameters.
    let a: Parameter?, b: Parameter?, magnitude: Parameter?
    // OP: the hypernetwork and, for OP-DoRA, the magnitude head m = Wm h + cm + offset.
    let mlp: HyperMLP?
    let wm: Parameter?, cm: Parameter?
    let offset: DeviceBuffer?
    let offsetHost: [Float]

    // Views of A, B and their gradients (slices of the MLP output for OP methods).
    let aBuf: DeviceBuffer, bBuf: DeviceBuffer, daBuf: DeviceBuffer, dbBuf: DeviceBuffer
    let effective: DeviceBuffer, dEffective: DeviceBuffer, baseWeight: DeviceBuffer
    // DoRA: m, dm, ‖V‖ per row, m/‖V‖, row dots, and V itself.
    let mBuf: DeviceBuffer?, dmBuf: DeviceBuffer?
    let norms: DeviceBuffer?, factors: DeviceBuffer?, rowDot: DeviceBuffer?, direction: DeviceBuffer?, scratch: DeviceBuffer?
    /// DoRA on a v2 plugin: ‖V‖² per row, for the quotients formed on the device.
    let normSquares: DeviceBuffer?

    init(_ ctx: KernelContext, layer index: Int, base: BaseNetwork.Layer, method: AdapterMethod, rank: Int, alpha: Double,
         hidden: Int, zDim: Int, rng: inout SeededRandom) throws {
        layer = index
        name = base.name
        self.method = method
        self.rank = rank
        scale = Float(alpha / Double(rank))
        outF = base.outFeatures
        inF = base.inFeatures
        self.hidden = hidden
        let aCount = rank * inF, bCount = outF * rank
        baseWeight = try ctx.alloc(count: outF * inF)
        try ctx.upload(base.weight, to: baseWeight)
        effective = try ctx.alloc(count: outF * inF)
        dEffective = try ctx.alloc(count: outF * inF)
        let rowNorms = Self.rowNorms(base.weight, rows: outF, cols: inF)

        var params: [Parameter] = []
        if method.usesHypernetwork {
            let net = try HyperMLP(ctx, prefix: "op_mlp", zDim: zDim, hidden: hidden, outputs: aCount + bCount,
                                   zeroRows: aCount..<(aCount + bCount), rng: &rng)
            mlp = net
            params = net.parameters
            a = nil; b = nil; magnitude = nil
            aBuf = net.v.slice(offset: 0, count: aCount)
            bBuf = net.v.slice(offset: aCount, count: bCount)
            daBuf = net.dv.slice(offset: 0, count: aCount)
            dbBuf = net.dv.slice(offset: aCount, count: bCount)
            if method == .opDora {
                // The head starts at zero with offset = ‖W‖ per row: the model starts at the base.
                let w = try Parameter(ctx, name: "op_mlp.magnitude.weight", shape: [outF, hidden], initial: [Float](repeating: 0, count: outF * hidden))
                let c = try Parameter(ctx, name: "op_mlp.magnitude.bias", shape: [outF], initial: [Float](repeating: 0, count: outF))
                params += [w, c]
                wm = w; cm = c
                offsetHost = rowNorms
                let o = try ctx.alloc(count: outF)
                try ctx.upload(rowNorms, to: o)
                offset = o
                mBuf = try ctx.alloc(count: outF)
                dmBuf = try ctx.alloc(count: outF)
            } else {
                wm = nil; cm = nil; offset = nil; offsetHost = []; mBuf = nil; dmBuf = nil
            }
        } else {
            // PEFT's default init: A Kaiming-uniform, B zero; DoRA m = ‖W‖ per row.
            mlp = nil; wm = nil; cm = nil; offset = nil; offsetHost = []
            let pa = try Parameter(ctx, name: "lora_A.weight", shape: [rank, inF], initial: rng.kaimingUniform(count: aCount, fanIn: inF))
            let pb = try Parameter(ctx, name: "lora_B.weight", shape: [outF, rank], initial: [Float](repeating: 0, count: bCount))
            a = pa; b = pb
            params = [pa, pb]
            aBuf = pa.value; bBuf = pb.value; daBuf = pa.grad; dbBuf = pb.grad
            if method == .dora {
                let m = try Parameter(ctx, name: "lora_magnitude_vector", shape: [outF], initial: rowNorms)
                magnitude = m
                params.append(m)
                mBuf = m.value
                dmBuf = m.grad
            } else {
                magnitude = nil; mBuf = nil; dmBuf = nil
            }
        }
        if method.usesMagnitude {
            norms = try ctx.alloc(count: outF)
            factors = try ctx.alloc(count: outF)
            rowDot = try ctx.alloc(count: outF)
            direction = try ctx.alloc(count: outF * inF)
            scratch = try ctx.alloc(count: outF * inF)
            normSquares = ctx.hasElementwiseV2 ? try ctx.alloc(count: outF) : nil
        } else {
            norms = nil; factors = nil; rowDot = nil; direction = nil; scratch = nil; normSquares = nil
        }
        parameters = params
    }

    static func rowNorms(_ w: [Float], rows: Int, cols: Int) -> [Float] {
        (0..<rows).map { i in
            var s = 0.0
            for j in 0..<cols { let x = Double(w[i * cols + j]); s += x * x }
            return Float(s.squareRoot())
        }
    }

    var trainParameterCount: Int { parameters.reduce(0) { $0 + $1.count } }
    var inferenceParameterCount: Int { rank * (inF + outF) + (method.usesMagnitude ? outF : 0) }

    /// Generates A, B (and m) from the MLP, then forms the effective weight.
    func forward(_ ctx: KernelContext) throws {
        if let mlp {
            try mlp.forward(ctx)
            if let wm, let cm, let offset, let mBuf {
                try ctx.copy(from: cm.value, to: mBuf)
                try ctx.axpy(alpha: 1, x: offset, y: mBuf)
                try ctx.gemm(transA: false, transB: false, m: outF, n: 1, k: hidden, alpha: 1, a: wm.value, lda: hidden, b: mlp.h, ldb: 1, beta: 1, c: mBuf, ldc: 1)
            }
        }
        // W_eff = W + s·B·A
        try ctx.copy(from: baseWeight, to: effective)
        try ctx.gemm(transA: false, transB: false, m: outF, n: inF, k: rank, alpha: scale, a: bBuf, lda: rank, b: aBuf, ldb: inF, beta: 1, c: effective, ldc: inF)
        if method.usesMagnitude, let mBuf, let norms, let factors, let direction {
            // DoRA: W_eff = (m / ‖V‖) V per output row. Unlike PEFT (which detaches the
            // norm to save memory) the gradient flows through ‖V‖ too: it is the exact one.
            try ctx.copy(from: effective, to: direction)
            try ctx.rowNorms(rows: outF, cols: inF, x: direction, out: norms)
            if ctx.hasElementwiseV2 {
                try ctx.divide(mBuf, by: norms, into: factors)
            } else {
                // A v1 plugin has no divide: the quotients go through the host.
                let n = try ctx.download(norms), m = try ctx.download(mBuf)
                try ctx.upload(zip(m, n).map { $0 / $1 }, to: factors)
            }
            try ctx.scaleRows(rows: outF, cols: inF, s: factors, x: effective)
        }
    }

    /// From dL/dW_eff (in `dEffective`) to the parameters' gradients.
    func backward(_ ctx: KernelContext) throws {
        if method.usesMagnitude, let dmBuf, let norms, let factors, let rowDot, let direction, let scratch {
            // With G = dL/dW_eff, d_i = G_i·V_i and n_i = ‖V_i‖:
            //   dm_i = d_i / n_i ;  dV_i = (m_i / n_i) (G_i − (d_i / n_i²) V_i)
            try ctx.rowDots(rows: outF, cols: inF, a: dEffective, b: direction, out: rowDot)
            if let normSquares {
                // The same f32 operations as the host path below, so the same bits:
                // -d/(n·n) is -(d/(n·n)) exactly.
                try ctx.divide(rowDot, by: norms, into: dmBuf)
                try ctx.multiply(norms, by: norms, into: normSquares)
                try ctx.divide(rowDot, by: normSquares, into: rowDot)
                try ctx.scale(rowDot, by: -1)
            } else {
                let d = try ctx.download(rowDot), n = try ctx.download(norms)
                try ctx.upload(zip(d, n).map { $0 / $1 }, to: dmBuf)
                try ctx.upload(zip(d, n).map { -$0 / ($1 * $1) }, to: rowDot)
            }
            try ctx.copy(from: direction, to: scratch)
            try ctx.scaleRows(rows: outF, cols: inF, s: rowDot, x: scratch)
            try ctx.axpy(alpha: 1, x: scratch, y: dEffective)
            try ctx.scaleRows(rows: outF, cols: inF, s: factors, x: dEffective)
        }
        // dB = s·dV·Aᵀ ; dA = s·Bᵀ·dV
        try ctx.gemm(transA: false, transB: true, m: outF, n: rank, k: inF, alpha: scale, a: dEffective, lda: inF, b: aBuf, ldb: inF, beta: 0, c: dbBuf, ldc: rank)
        try ctx.gemm(transA: true, transB: false, m: rank, n: inF, k: outF, alpha: scale, a: bBuf, lda: rank, b: dEffective, ldb: inF, beta: 0, c: daBuf, ldc: inF)
        guard let mlp else { return }
        try mlp.backwardOutput(ctx)
        if let wm, let cm, let dmBuf {
            // m = Wm h + cm + offset
            try ctx.gemm(transA: false, transB: false, m: outF, n: hidden, k: 1, alpha: 1, a: dmBuf, lda: 1, b: mlp.h, ldb: hidden, beta: 0, c: wm.grad, ldc: hidden)
            try ctx.copy(from: dmBuf, to: cm.grad)
            try ctx.gemm(transA: true, transB: false, m: hidden, n: 1, k: outF, alpha: 1, a: wm.value, lda: hidden, b: dmBuf, ldb: 1, beta: 1, c: mlp.dh, ldc: 1)
        }
        try mlp.backwardHidden(ctx)
    }

    /// Current A, B (and m) on the host, as PEFT stores them.
    func materialize(_ ctx: KernelContext) throws -> MaterializedModule {
        try forward(ctx)
        let m: [Float]? = method.usesMagnitude ? try ctx.download(mBuf!) : nil
        return MaterializedModule(path: name, a: try ctx.download(aBuf), aShape: [rank, inF], b: try ctx.download(bBuf),
                                  bShape: [outF, rank], magnitude: m, rank: rank)
    }
}
