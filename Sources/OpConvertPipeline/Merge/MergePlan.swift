import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// How one adapter contribution changes one base tensor.
package struct MergeOp: Sendable {
    package enum Layout {
        /// Storage rows are output features: W[out, in...] += s·B·A.
        case direct
        /// Storage is transposed (GPT-2 Conv1D, Embedding): W[in, out] += s·(B·A)ᵀ.
        case transposed
    }
    package enum Action {
        /// `scale`: alpha/r (or its equivalent) times the adapter's weight, in f64: merges
        /// compute in f64 and round once, so an f32 scale (16/3 is not one) would be a second rounding.
        case lora(LoraModule, layout: Layout, scale: Double, outDim: Int, inner: Int)
        case replace(TensorData)
        case addBias(TensorData, scale: Double)
    }
    package var adapter: String
    package var module: String
    package var action: Action
    /// The rows of the base tensor this op changes when it is one part of a fused tensor
    /// (q, k or v of OpenCLIP's in_proj_weight); nil: all rows.
    package var rows: Range<Int>?

    package init(adapter: String, module: String, action: Action, rows: Range<Int>? = nil) {
        self.adapter = adapter
        self.module = module
        self.action = action
        self.rows = rows
    }

    /// DoRA on a transposed weight needs norms over whole columns: no row chunking.
    var needsWholeTensor: Bool {
        if case let .lora(m, layout, _, _, _) = action, m.magnitude != nil, layout == .transposed { return true }
        return false
    }
}

/// Which base tensors each adapter changes, checked entirely before anything is written.
struct MergePlan {
    var ops: [String: [MergeOp]] = [:]
    var moduleCounts: [Int] = []
    /// Full replacements with another row count (resized vocabularies): written as given.
    var resized: [String: (data: TensorData, module: String)] = [:]
    /// The output projection of a tied base that stores only the embedding: adapters may
    /// name it, and it reads the embedding's rows.
    let virtualHead: (name: String, embedding: String)?
    let base: TensorStore

    /// The base tensor `name` reads from (the embedding for a virtual output projection).
    func entry(named name: String) -> TensorStore.Entry? {
        if let v = virtualHead, name == v.name, var e = base.entry(named: v.embedding) {
            e.info.name = name
            return e
        }
        return base.entry(named: name)
    }

    init(base: TensorStore, adapters: [(adapter: Adapter, weight: Double)], vocab: VocabularyTensors? = nil) throws {
        self.base = base
        virtualHead = vocab.flatMap { v in v.headIsVirtual ? v.embedding.map { (v.head, $0) } : nil }
        let vocabNames = Set([vocab?.embedding, vocab?.head].compactMap { $0 })
        let baseNames = base.entries.map(\.info.name) + (virtualHead.map { [$0.name] } ?? [])
        for (adapter, weight) in adapters {
            let resolver = adapter.naming.resolver(baseNames: baseNames)
            var unmatched: [String] = []
            func target(_ name: String, module: String) throws -> TensorStore.Entry? {
                try resolve(name, module: module, unmatched: &unmatched)
            }
            func resolve(_ name: String, module: String, unmatched: inout [String]) throws -> TensorStore.Entry? {
                switch resolver.resolve(name) {
                case let .found(n):
                    guard let entry = entry(named: n) else {
                        throw AdapterError.invalidTensors(path: adapter.path, module: module, reason: "its name table points at \(n), which the base does not have")
                    }
                    return entry
                case .none: unmatched.append(module); return nil
                case let .ambiguous(c): throw AdapterError.ambiguousModule(adapter: adapter.path, module: module, candidates: c)
                }
            }
            /// The rows a name's part of a fused tensor covers (nil: the whole tensor).
            func rows(_ name: String, of t: TensorStore.Entry, module: String) throws -> Range<Int>? {
                guard let part = resolver.rowPart(name) else { return nil }
                guard let range = part.range(rows: t.info.shape.first ?? 0) else {
                    throw AdapterError.shapeMismatch(adapter: adapter.path, module: module, reason: "base tensor \(t.info.name) \(t.info.shape) does not split into \(part.count) equal row parts")
                }
                return range
            }
            // Replacements first: a saved base_layer copy is the weight its LoRA applies to.
            for (name, data) in adapter.replacements {
                guard let t = try target(name, module: name) else { continue }
                if resolver.rowPart(name) != nil {
                    throw AdapterError.unsupported(path: adapter.path, reason: "module \(name) replaces part of the fused tensor \(t.info.name); replacing a row part is not supported")
                }
                // An embedding or output projection with another row count: a resized vocabulary.
                if t.info.shape != data.shape, vocabNames.contains(t.info.name), t.info.shape.count == 2, data.shape.count == 2,
                   t.info.shape[1] == data.shape[1] {
                    ops[t.info.name] = nil
                    resized[t.info.name] = (data, name)
                    continue
                }
                guard t.info.shape == data.shape else {
                    throw AdapterError.shapeMismatch(adapter: adapter.path, module: name, reason: "modules_to_save tensor has shape \(data.shape) but the base tensor \(t.info.name) has \(t.info.shape)")
                }
                ops[t.info.name, default: []].append(MergeOp(adapter: adapter.path, module: name, action: .replace(data)))
            }
            for m in adapter.modules {
                guard let w = try target(m.path + ".weight", module: m.path) else { continue }
                if resized[w.info.name] != nil { throw afterResize(m.path, w.info.name, adapter.path) }
                if vocabNames.contains(w.info.name) { try Self.checkVocabulary(m, weight: w.info, adapter: adapter.path) }
                let part = try rows(m.path + ".weight", of: w, module: m.path)
                var op = try Self.loraOp(m, weight: w.info, rows: part, transposed: resolver.isTransposed(m.path + ".weight"), adapter: adapter, scale: m.scaling * weight)
                op.rows = part
                ops[w.info.name, default: []].append(op)
                if let bias = m.bias {
                    // `<weight>.bias`, else the naming's own bias name (a fused tensor's bias part).
                    var derived = w.info.name.hasSuffix(".weight") ? base.entry(named: String(w.info.name.dropLast(".weight".count)) + ".bias") : nil
                    var biasRows: Range<Int>?
                    if derived == nil {
                        var noBias: [String] = []
                        derived = try resolve(m.path + ".bias", module: m.path, unmatched: &noBias)
                        biasRows = try derived.flatMap { try rows(m.path + ".bias", of: $0, module: m.path) }
                    }
                    guard let b = derived else {
                        throw AdapterError.unsupported(path: adapter.path, reason: "module \(m.path) has lora_B.bias but the base layer has no bias tensor")
                    }
                    guard (biasRows?.count ?? b.info.elementCount) == bias.elementCount else {
                        throw AdapterError.shapeMismatch(adapter: adapter.path, module: m.path, reason: "lora_B.bias has \(bias.elementCount) elements, base bias \(b.info.shape)")
                    }
                    ops[b.info.name, default: []].append(MergeOp(adapter: adapter.path, module: m.path,
                                                                 action: .addBias(bias, scale: m.scaling * weight), rows: biasRows))
                }
            }
            // Full deltas add elementwise, as a bias does (the engine's addBias handles any shape).
            for d in adapter.deltas {
                guard let t = try target(d.name, module: d.name) else { continue }
                if resized[t.info.name] != nil { throw afterResize(d.name, t.info.name, adapter.path) }
                let part = try rows(d.name, of: t, module: d.name)
                var expected = t.info.shape
                if let part, !expected.isEmpty { expected[0] = part.count }
                // A conv delta may come flattened after its first dimension ([out, in·kh·kw],
                // as LyCORIS stores LoHa/LoKr factors): the same row-major values.
                let flattened = d.data.shape.count == 2 && expected.count > 2 && d.data.shape[0] == expected[0]
                    && d.data.shape[1] == expected.dropFirst().reduce(1, *)
                guard expected == d.data.shape || flattened else {
                    throw AdapterError.shapeMismatch(adapter: adapter.path, module: d.name, reason: "full delta has shape \(d.data.shape) but the base tensor \(t.info.name) has \(part == nil ? "" : "a row part of ")\(expected)")
                }
                ops[t.info.name, default: []].append(MergeOp(adapter: adapter.path, module: d.name,
                                                             action: .addBias(d.data, scale: d.scale * weight), rows: part))
            }
            if !unmatched.isEmpty {
                let sample = base.entries.prefix(3).map(\.info.name).joined(separator: ", ")
                throw AdapterError.unmatchedModules(adapter: adapter.path, modules: unmatched,
                                                    hint: "Base tensors are named like: \(sample)")
            }
            moduleCounts.append(adapter.modules.count + adapter.replacements.count + adapter.deltas.count)
        }
        for name in ops.keys {
            guard let dtype = entry(named: name)?.info.dtype else { continue }
            guard dtype.isDecodableFloat else {
                throw AdapterError.unsupported(path: adapters[0].adapter.path, reason: "base tensor \(name) has dtype \(dtype.rawValue); only float weights can be merged")
            }
        }
    }

    /// A LoRA or delta on top of a replacement with another row count (PEFT's saved
    /// base_layer of a resized embedding): the base must be the resized model.
    private func afterResize(_ module: String, _ tensor: String, _ path: String) -> AdapterError {
        let rows = resized[tensor]?.data.shape.first ?? 0, baseRows = entry(named: tensor)?.info.shape.first ?? 0
        return AdapterError.shapeMismatch(adapter: path, module: module, reason: "changes \(tensor) of a resized vocabulary (the adapter's copy has \(rows) rows, the base \(baseRows)): merge it into the resized base (resize_token_embeddings(\(rows)) and save that model first)")
    }

    /// A LoRA on the embedding or output projection whose vocabulary side has another row
    /// count: the adapter was trained on a resized vocabulary.
    private static func checkVocabulary(_ m: LoraModule, weight w: TensorInfo, adapter path: String) throws {
        guard w.shape.count == 2 else { return }
        let vocab = w.shape[0], hidden = w.shape[1]
        // Embedding LoRA: A [r, vocab], B [hidden, r]; lm_head LoRA: A [r, hidden], B [vocab, r].
        let (rows, factor) = m.isEmbedding ? (m.a.shape.last ?? 0, "lora_embedding_A \(m.a.shape)") : (m.b.shape.first ?? 0, "lora_B \(m.b.shape)")
        let other = m.isEmbedding ? (m.b.shape.first ?? 0) : (m.a.shape.last ?? 0)
        if rows != vocab && other == hidden {
            throw AdapterError.shapeMismatch(adapter: path, module: m.path, reason: "\(factor) covers a vocabulary of \(rows) tokens but the base tensor \(w.name) has \(vocab) rows: the adapter was trained on a resized vocabulary; merge it into the resized base (resize_token_embeddings(\(rows)) and save that model first)")
        }
    }

    private static func loraOp(_ m: LoraModule, weight w: TensorInfo, rows part: Range<Int>?, transposed: Bool = false, adapter: Adapter, scale: Double) throws -> MergeOp {
        let outDim = m.b.shape[0]
        let inner = m.a.shape.dropFirst().reduce(1, *)
        let path = adapter.path
        guard m.b.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            throw AdapterError.unsupported(path: path, reason: "module \(m.path): lora_B \(m.b.shape) is not a 1x1 projection")
        }
        let rows = part?.count ?? w.shape.first ?? 0
        let rest = w.shape.dropFirst().reduce(1, *)
        // A linear LoRA ([r, in]) fits a 1x1 convolution's kernel [out, in, 1, 1] too.
        let kernelFits = w.shape.count < 3 || Array(w.shape.dropFirst(2)) == Array(m.a.shape.dropFirst(2))
            || (m.a.shape.count == 2 && w.shape.dropFirst(2).allSatisfy { $0 == 1 })
        let directFits = rows == outDim && rest == inner && kernelFits
        let transposedFits = part == nil && w.shape.count == 2 && rows == inner && rest == outDim
        let layout: MergeOp.Layout
        switch (directFits, transposedFits) {
        case (true, true): layout = (m.isEmbedding || m.fanInFanOut || transposed) ? .transposed : .direct
        case (true, false): layout = .direct
        case (false, true): layout = .transposed
        case (false, false):
            if w.shape.count >= 3, rows == outDim, m.a.shape.count == w.shape.count, w.shape[1] > 0, m.a.shape[1] % w.shape[1] == 0, m.a.shape[1] != w.shape[1] {
                throw AdapterError.unsupported(path: path, reason: "module \(m.path) is a grouped convolution (groups = \(m.a.shape[1] / w.shape[1])); LoRA on conv groups > 1 cannot be merged")
            }
            throw AdapterError.shapeMismatch(adapter: path, module: m.path,
                                             reason: "lora_A \(m.a.shape) and lora_B \(m.b.shape) do not fit base tensor \(w.name) \(w.shape)")
        }
        if let mag = m.magnitude, mag.elementCount != outDim {
            throw AdapterError.shapeMismatch(adapter: path, module: m.path, reason: "lora_magnitude_vector has \(mag.elementCount) elements, expected \(outDim)")
        }
        if part != nil, m.magnitude != nil {
            throw AdapterError.unsupported(path: path, reason: "module \(m.path) is DoRA on part of the fused tensor \(w.name); DoRA on a row part is not supported")
        }
        return MergeOp(adapter: path, module: m.path, action: .lora(m, layout: layout, scale: scale, outDim: outDim, inner: inner))
    }
}
