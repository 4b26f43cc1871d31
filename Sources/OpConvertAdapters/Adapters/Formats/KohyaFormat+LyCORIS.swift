import COpConvertKernels
import OpConvertCore
import OpConvertTensors

/// The LyCORIS module types found in kohya-prefixed files (facts: notes/sd-formats.md, and
/// lycoris-lora's forward pass, which is the reference):
/// - LoHa: `hada_w1_a` [out, r], `hada_w1_b` [r, in·k], `hada_w2_a/b` alike;
///   ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha/r. Tucker (`hada_t1/t2` [r, r, kh, kw], with
///   `hada_w*_a` [r, out] and `hada_w*_b` [r, in]): each half is t ×₁ w_aᵀ ×₂ w_bᵀ.
/// - LoKr: ΔW = kron(w1, w2) · alpha/r, each half whole (`lokr_w1`, `lokr_w2`) or a product
///   (`lokr_w1_a`·`lokr_w1_b`, `lokr_w2_a`·`lokr_w2_b`, or Tucker `lokr_t2` with w2_a [r, c],
///   w2_b [r, d]); r is the factorized half's inner dimension, and when neither half is
///   factorized alpha is not applied (scale 1).
/// - Tucker LoCon: `lora_mid` [r, r, kh, kw] between a 1x1 `lora_down` and a 1x1 `lora_up`.
/// - `diff` / `diff_b`: the weight's and the bias's full deltas, added as they are.
///
/// None of the first three is a rank-r product B·A, so each becomes a full delta named
/// `<module>.weight` with scale 1: checked (shapes) when the file is read, computed in f64
/// (every sum over the rank in ascending index order, then the product and the scale: same
/// inputs, same bits) only when it is read, and not kept, so an adapter holds its factors and
/// a merge one module's delta at a time. The merge adds it to the weight in f64 and rounds
/// once, to the base dtype. A conv delta whose factors flatten the kernel
/// ([out, in·kh·kw]) keeps that shape: the merge accepts a delta flattened after its first
/// dimension.
extension KohyaFormat {
    package static var lycorisFamilies: [KohyaModuleFamily] { [lohaFamily, lokrFamily, tuckerLoConFamily, diffFamily] }

    // MARK: LoHa

    package static let lohaFamily = KohyaModuleFamily(name: "loha", markers: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]) { module in
        try module.refuseDoRA("LoHa")
        let w1a = try module.required("hada_w1_a"), w1b = try module.required("hada_w1_b")
        let w2a = try module.required("hada_w2_a"), w2b = try module.required("hada_w2_b")
        let t1 = module.tensors["hada_t1"], t2 = module.tensors["hada_t2"]
        guard (t1 == nil) == (t2 == nil) else {
            throw module.error("has \(t1 == nil ? "hada_t2 but no hada_t1" : "hada_t1 but no hada_t2"); Tucker LoHa needs both")
        }
        let rank = w1b.shape.first ?? 0
        guard rank > 0 else { throw module.error("hada_w1_b has shape \(w1b.shape); expected [r, ...] with r > 0") }
        let scale = (try module.alpha() ?? Double(rank)) / Double(rank)
        let half1: LazyDense, half2: LazyDense
        if let t1, let t2 {
            half1 = try LyCORISMath.tucker(core: module.dense("hada_t1", t1), a: module.dense("hada_w1_a", w1a), b: module.dense("hada_w1_b", w1b), module: module)
            half2 = try LyCORISMath.tucker(core: module.dense("hada_t2", t2), a: module.dense("hada_w2_a", w2a), b: module.dense("hada_w2_b", w2b), module: module)
        } else {
            half1 = try LyCORISMath.product(module.dense("hada_w1_a", w1a), module.dense("hada_w1_b", w1b), names: ("hada_w1_a", "hada_w1_b"), module: module)
            half2 = try LyCORISMath.product(module.dense("hada_w2_a", w2a), module.dense("hada_w2_b", w2b), names: ("hada_w2_a", "hada_w2_b"), module: module)
        }
        guard half1.shape == half2.shape else {
            throw module.error("its two Hadamard halves have shapes \(half1.shape) and \(half2.shape); they must be equal")
        }
        let delta = LyCORISMath.hadamard(half1, half2, scale: scale)
        return KohyaParsed(deltas: [FullDelta(name: module.name + ".weight", data: delta.tensor, scale: 1)],
                           consumed: ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"])
    }

    // MARK: LoKr

    package static let lokrFamily = KohyaModuleFamily(name: "lokr", markers: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"]) { module in
        try module.refuseDoRA("LoKr")
        var rank: Int?
        // w1: whole, or w1_a [a, r] · w1_b [r, b].
        let w1: LazyDense
        if let whole = module.tensors["lokr_w1"] {
            if module.tensors["lokr_w1_a"] != nil || module.tensors["lokr_w1_b"] != nil {
                throw module.error("has lokr_w1 and lokr_w1_a/lokr_w1_b; a LoKr half is either whole or factorized")
            }
            w1 = try module.dense("lokr_w1", whole)
            guard w1.shape.count == 2 else { throw module.error("lokr_w1 has shape \(w1.shape); expected a matrix") }
        } else {
            let a = try module.required("lokr_w1_a"), b = try module.required("lokr_w1_b")
            w1 = try LyCORISMath.product(module.dense("lokr_w1_a", a), module.dense("lokr_w1_b", b), names: ("lokr_w1_a", "lokr_w1_b"), module: module)
            rank = a.shape.count == 2 ? a.shape[1] : nil
        }
        // w2: whole, w2_a [c, r] · w2_b [r, d·k], or Tucker t2 [r, r, k...] with w2_a [r, c], w2_b [r, d].
        let w2: LazyDense
        if let whole = module.tensors["lokr_w2"] {
            if module.tensors["lokr_w2_a"] != nil || module.tensors["lokr_w2_b"] != nil || module.tensors["lokr_t2"] != nil {
                throw module.error("has lokr_w2 and lokr_w2_a/lokr_w2_b/lokr_t2; a LoKr half is either whole or factorized")
            }
            w2 = try module.dense("lokr_w2", whole)
        } else {
            let a = try module.required("lokr_w2_a"), b = try module.required("lokr_w2_b")
            if let t = module.tensors["lokr_t2"] {
                w2 = try LyCORISMath.tucker(core: module.dense("lokr_t2", t), a: module.dense("lokr_w2_a", a), b: module.dense("lokr_w2_b", b), module: module)
                if rank == nil { rank = t.shape.first }
            } else {
                w2 = try LyCORISMath.product(module.dense("lokr_w2_a", a), module.dense("lokr_w2_b", b), names: ("lokr_w2_a", "lokr_w2_b"), module: module)
                if rank == nil { rank = a.shape.count == 2 ? a.shape[1] : nil }
            }
        }
        guard w2.shape.count >= 2 else { throw module.error("the LoKr w2 half has shape \(w2.shape); expected a matrix or a kernel") }
        // Neither half factorized: LyCORIS ignores alpha (scale 1).
        var scale = 1.0
        if let rank {
            guard rank > 0 else { throw module.error("LoKr factor rank is 0") }
            scale = (try module.alpha() ?? Double(rank)) / Double(rank)
        }
        let delta = LyCORISMath.kron(w1, w2, scale: scale)
        return KohyaParsed(deltas: [FullDelta(name: module.name + ".weight", data: delta.tensor, scale: 1)],
                           consumed: ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"])
    }

    // MARK: Tucker LoCon

    package static let tuckerLoConFamily = KohyaModuleFamily(name: "locon-tucker", markers: ["lora_mid.weight"]) { module in
        try module.refuseDoRA("Tucker LoCon (lora_mid)")
        let down = try module.required("lora_down.weight"), up = try module.required("lora_up.weight"), mid = try module.required("lora_mid.weight")
        guard down.shape.count == 4 || down.shape.count == 2, down.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            throw module.error("lora_down.weight has shape \(down.shape); with lora_mid it must be a 1x1 kernel [r, in, 1, 1]")
        }
        guard up.shape.count == 4 || up.shape.count == 2, up.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            throw module.error("lora_up.weight has shape \(up.shape); with lora_mid it must be a 1x1 kernel [out, r, 1, 1]")
        }
        let rank = down.shape[0]
        guard rank > 0, up.shape[1] == rank, mid.shape.count >= 2, mid.shape[0] == rank, mid.shape[1] == rank else {
            throw module.error("lora_down \(down.shape), lora_mid \(mid.shape), lora_up \(up.shape) do not chain (expected [r, in, 1, 1], [r, r, kh, kw], [out, r, 1, 1])")
        }
        let scale = (try module.alpha() ?? Double(rank)) / Double(rank)
        let u = try module.dense("lora_up.weight", up), d = try module.dense("lora_down.weight", down)
        // lora_up [out, r] plays the role of Tucker's mode-1 factor transposed: a [r, out].
        let delta = try LyCORISMath.tucker(core: module.dense("lora_mid.weight", mid), a: u.flattened.transposed, b: d.flattened, module: module)
        return KohyaParsed(deltas: [FullDelta(name: module.name + ".weight", data: delta.scaled(scale).tensor, scale: 1)],
                           consumed: ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha"])
    }

    // MARK: diff

    package static let diffFamily = KohyaModuleFamily(name: "diff", markers: ["diff", "diff_b"]) { module in
        var deltas: [FullDelta] = []
        for (key, target) in [("diff", ".weight"), ("diff_b", ".bias")] {
            guard let t = module.tensors[key] else { continue }
            guard t.dtype.isDecodableFloat else { throw module.error("\(key) has dtype \(t.dtype.rawValue), expected a float type") }
            deltas.append(FullDelta(name: module.name + target, data: t, scale: 1))
        }
        return KohyaParsed(deltas: deltas, consumed: ["diff", "diff_b"])
    }
}

extension KohyaModule {
    func required(_ key: String) throws -> TensorData {
        guard let t = tensors[key] else {
            let present = tensors.keys.sorted().joined(separator: ", ")
            throw error("has no \(key) (it has \(present))")
        }
        return t
    }

    /// A tensor's values in f64 when they are needed, with a message naming it now when it is
    /// not a float tensor.
    func dense(_ key: String, _ t: TensorData) throws -> LazyDense {
        guard t.dtype.isDecodableFloat else { throw error("\(key) has dtype \(t.dtype.rawValue), expected a float type") }
        return LazyDense(shape: t.shape) { DenseF64(shape: t.shape, values: try t.doubles()) }
    }

    /// DoRA (`dora_scale`) is read for LoRA/LoCon only.
    func refuseDoRA(_ kind: String) throws {
        if tensors["dora_scale"] != nil {
            throw AdapterError.unsupported(path: file, reason: "module \(name): dora_scale on a \(kind) module (weight-decomposed \(kind)) is not supported")
        }
    }
}

/// A dense row-major tensor in f64: the LyCORIS products' working precision.
package struct DenseF64: Sendable, Equatable {
    package var shape: [Int]
    package var values: [Double]

    package init(shape: [Int], values: [Double]) {
        self.shape = shape
        self.values = values
    }

    /// [first, rest]: dimensions after the first multiplied out.
    package var flattened: DenseF64 {
        DenseF64(shape: [shape.first ?? 1, shape.dropFirst().reduce(1, *)], values: values)
    }

    /// The transpose of a matrix.
    package var transposed: DenseF64 {
        let r = shape[0], c = shape.count > 1 ? shape[1] : 1
        var t = [Double](repeating: 0, count: values.count)
        for i in 0..<r { for j in 0..<c { t[j * r + i] = values[i * c + j] } }
        return DenseF64(shape: [c, r], values: t)
    }

    package func scaled(_ s: Double) -> DenseF64 { s == 1 ? self : DenseF64(shape: shape, values: values.map { $0 * s }) }

}

/// A DenseF64 whose shape is known (and checked) now and whose values are computed when read.
package struct LazyDense: Sendable {
    package let shape: [Int]
    package let make: @Sendable () throws -> DenseF64

    package init(shape: [Int], make: @escaping @Sendable () throws -> DenseF64) {
        self.shape = shape
        self.make = make
    }

    package var flattened: LazyDense {
        let m = make
        return LazyDense(shape: [shape.first ?? 1, shape.dropFirst().reduce(1, *)]) { try m().flattened }
    }

    package var transposed: LazyDense {
        let m = make
        return LazyDense(shape: [shape.count > 1 ? shape[1] : 1, shape[0]]) { try m().transposed }
    }

    package func scaled(_ s: Double) -> LazyDense {
        let m = make
        return s == 1 ? self : LazyDense(shape: shape) { try m().scaled(s) }
    }

    /// The values as a tensor computed each time it is read.
    package var tensor: TensorData {
        let m = make
        return .computed(ComputedTensor(shape: shape) { try m().values })
    }
}

/// The LyCORIS reconstructions, in f64 with a fixed summation order (ascending rank index),
/// so the same factors give the same bits on any machine.
package enum LyCORISMath {
    /// a [m, r] · b [r, rest...] -> [m, rest...] (b's trailing dimensions kept).
    package static func product(_ a: LazyDense, _ b: LazyDense, names: (String, String), module: KohyaModule) throws -> LazyDense {
        guard a.shape.count == 2, b.shape.count >= 2, a.shape[1] == b.shape[0] else {
            throw module.error("\(names.0) \(a.shape) and \(names.1) \(b.shape) do not multiply (expected [m, r] and [r, ...])")
        }
        let (ma, mb) = (a.make, b.make)
        return LazyDense(shape: [a.shape[0]] + Array(b.shape.dropFirst())) { product(try ma(), try mb()) }
    }

    static func product(_ a: DenseF64, _ b: DenseF64) -> DenseF64 {
        let m = a.shape[0], r = a.shape[1], n = b.values.count / max(b.shape[0], 1)
        // The merge's f64 kernel (per element an fma chain over the rank in ascending order, so
        // the same bits however the rows are split), rows spread over the cores.
        var out = [Double](repeating: 0, count: m * n)
        if m > 0, n > 0, r > 0 {
            out.withUnsafeMutableBufferPointer { o in
                a.values.withUnsafeBufferPointer { pa in
                    b.values.withUnsafeBufferPointer { pb in
                        let (po, pa, pb) = (UncheckedSendable(o.baseAddress!), UncheckedSendable(pa.baseAddress!), UncheckedSendable(pb.baseAddress!))
                        DTypeConversion.parallel(m, minPiece: max(1, (1 << 16) / max(n, 1)), align: 1) { i0, rows in
                            opc_lowrank_update_f64(po.value + i0 * n, n, pa.value + i0 * r, r, 1, pb.value, n, rows, n, r, 1)
                        }
                    }
                }
            }
        }
        return DenseF64(shape: [m] + Array(b.shape.dropFirst()), values: out)
    }

    /// Tucker: core [r1, r2, k...], a [r1, p], b [r2, q] -> [p, q, k...] with
    /// out[p, q, k] = Σᵢ a[i, p] · Σⱼ core[i, j, k] · b[j, q].
    package static func tucker(core: LazyDense, a: LazyDense, b: LazyDense, module: KohyaModule) throws -> LazyDense {
        guard core.shape.count >= 2, a.shape.count == 2, b.shape.count == 2, a.shape[0] == core.shape[0], b.shape[0] == core.shape[1] else {
            throw module.error("Tucker factors do not chain: core \(core.shape), mode-1 \(a.shape), mode-2 \(b.shape) (expected [r1, r2, k...], [r1, out], [r2, in])")
        }
        let (mc, ma, mb) = (core.make, a.make, b.make)
        return LazyDense(shape: [a.shape[1], b.shape[1]] + Array(core.shape.dropFirst(2))) { tucker(core: try mc(), a: try ma(), b: try mb()) }
    }

    static func tucker(core: DenseF64, a: DenseF64, b: DenseF64) -> DenseF64 {
        let r1 = core.shape[0], r2 = core.shape[1], k = core.shape.dropFirst(2).reduce(1, *)
        let p = a.shape[1], q = b.shape[1]
        // temp[i, q, k] = Σⱼ core[i, j, k] · b[j, q]
        var temp = [Double](repeating: 0, count: r1 * q * k)
        for i in 0..<r1 {
            for j in 0..<r2 {
                for qi in 0..<q {
                    let bj = b.values[j * q + qi]
                    let dst = (i * q + qi) * k, src = (i * r2 + j) * k
                    for s in 0..<k { temp[dst + s] += core.values[src + s] * bj }
                }
            }
        }
        var out = [Double](repeating: 0, count: p * q * k)
        for pi in 0..<p {
            for i in 0..<r1 {
                let ai = a.values[i * p + pi]
                let dst = pi * q * k, src = i * q * k
                for x in 0..<(q * k) { out[dst + x] += ai * temp[src + x] }
            }
        }
        return DenseF64(shape: [p, q] + Array(core.shape.dropFirst(2)), values: out)
    }

    /// Element-wise product of equal shapes, times `scale`.
    package static func hadamard(_ x: LazyDense, _ y: LazyDense, scale: Double) -> LazyDense {
        let (mx, my) = (x.make, y.make)
        return LazyDense(shape: x.shape) {
            // In place: one module's delta is the largest thing a merge holds, so no third copy.
            var a = try mx()
            let b = try my()
            a.values.withUnsafeMutableBufferPointer { v in
                b.values.withUnsafeBufferPointer { w in for i in 0..<v.count { v[i] = v[i] * w[i] * scale } }
            }
            return a
        }
    }

    /// kron(w1 [a, b], w2 [c, d, k...]) · scale -> [a·c, b·d, k...]: w2's dimensions after the
    /// first are one block, which is torch.kron's layout for a kernel w2 too.
    package static func kron(_ w1: LazyDense, _ w2: LazyDense, scale: Double) -> LazyDense {
        let (m1, m2) = (w1.make, w2.make)
        return LazyDense(shape: [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]] + Array(w2.shape.dropFirst(2))) {
            kron(try m1(), try m2(), scale: scale)
        }
    }

    static func kron(_ w1: DenseF64, _ w2: DenseF64, scale: Double) -> DenseF64 {
        let a = w1.shape[0], b = w1.shape[1]
        let c = w2.shape[0], rest = w2.values.count / max(c, 1)
        let width = b * rest
        var out = [Double](repeating: 0, count: a * c * width)
        for i in 0..<a {
            for j in 0..<b {
                let s = w1.values[i * b + j] * scale
                for p in 0..<c {
                    let dst = (i * c + p) * width + j * rest, src = p * rest
                    for q in 0..<rest { out[dst + q] = s * w2.values[src + q] }
                }
            }
        }
        return DenseF64(shape: [a * c, b * w2.shape[1]] + Array(w2.shape.dropFirst(2)), values: out)
    }
}
