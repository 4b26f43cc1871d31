import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Full-delta modules (LyCORIS LoHa, LoKr, Tucker LoCon, `diff`) as LoRA modules, for
/// `convert --to kohya|diffusers|peft --rank R` (or `--energy F`): each module's ΔW (computed
/// in f64 when its turn comes) factorized by the SVD `extract` uses (randomized for --rank,
/// exact for --energy), B = V_r·S_r and A = U_rᵀ, scaling 1. A conv delta keeps its kernel
/// on A ([r, in, kh, kw]) and B is [out, r, 1, 1]; a delta stored flattened takes the
/// kernel from the base tensor it changes.
enum DeltaFactorizer {
    static func lowRank(_ adapter: Adapter, target: RankTarget, base: TensorStore?) throws -> (adapter: Adapter, modules: [ExtractSummary.Module]) {
        try target.validate()
        let options = ExtractOptions(base: "", tuned: "", output: "", target: target)
        let exact = { if case .energy = target { return true } else { return false } }()
        let resolver = base.map { adapter.naming.resolver(baseNames: $0.entries.map(\.info.name)) }
        var result = adapter
        var reports: [ExtractSummary.Module] = []
        result.deltas = []
        for d in adapter.deltas {
            guard d.name.hasSuffix(".weight") else {
                throw AdaptError.unsupported(path: adapter.path, reason: "module \(d.name) is a bias delta (diff_b); a LoRA has no bias term to hold it")
            }
            let module = String(d.name.dropLast(".weight".count))
            let shape = d.data.shape
            guard shape.count >= 2, shape[0] > 0 else {
                throw AdaptError.unsupported(path: adapter.path, reason: "module \(module): a delta of shape \(shape) has no low-rank form")
            }
            let out = shape[0], inner = shape.dropFirst().reduce(1, *)
            var kernel = Array(shape.dropFirst())
            if shape.count == 2, let resolver, let base, case let .found(name) = resolver.resolve(d.name),
               let e = base.entry(named: name), e.info.shape.count > 2, e.info.shape[0] == out, e.info.shape.dropFirst().reduce(1, *) == inner {
                kernel = Array(e.info.shape.dropFirst())
            }
            // Dᵀ in column-major order is ΔW's row-major buffer: [inner, out].
            var values = try d.data.doubles()
            if d.scale != 1 { for i in values.indices { values[i] *= d.scale } }
            guard values.allSatisfy(\.isFinite) else {
                throw AdaptError.mismatch(path: adapter.path, reason: "module \(module): its delta has NaN or Inf values")
            }
            let (factors, report) = try Extractor.factorize(Matrix(rows: inner, cols: out, values: values), module: module, out: out, inner: inner,
                                                            options: options, exact: exact)
            reports.append(report)
            guard let f = factors else { continue }   // a zero delta: nothing to write
            let k = f.rank
            result.modules.append(LoraModule(path: module, a: .memory(values: f.a, shape: [k] + kernel),
                                             b: .memory(values: f.b, shape: [out, k] + (kernel.count > 1 ? [1, 1] : [])),
                                             rank: k, scaling: 1))
        }
        return (result, reports)
    }
}
