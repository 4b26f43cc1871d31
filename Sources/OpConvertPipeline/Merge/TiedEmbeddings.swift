import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// What merge does when an adapter changes one side of a tied embedding / output projection.
public enum TieMode: String, CaseIterable, Sendable, Codable {
    /// PEFT's merge: every change goes into the one shared tensor, config.json unchanged
    /// (the output then differs from the adapted model).
    case keep
    /// The adapted model's behaviour: both tensors written, `tie_word_embeddings: false`.
    case untie
    /// Exit 69 naming the module.
    case refuse
}

/// The base's input embedding and output projection, and whether its config ties them.
package struct VocabularyTensors: Sendable {
    /// The stored input embedding (`model.embed_tokens.weight`, `transformer.wte.weight`, ...).
    package var embedding: String?
    /// The output projection's name; a tied base may not store it.
    package var head: String
    package var headStored: Bool
    /// Why the pair counts as tied ("tie_word_embeddings: true in config.json"), nil when not tied.
    package var tiedBecause: String?
    package var configPath: String?

    package var tied: Bool { tiedBecause != nil && embedding != nil }
    /// The output projection is the embedding tensor itself (not stored separately).
    package var headIsVirtual: Bool { tied && !headStored }

    /// Model types whose transformers 5.23 config class defaults `tie_word_embeddings` to
    /// true when config.json does not say (checked against the config classes: llama,
    /// mistral, qwen2/3, phi3, mixtral, gpt_neox, olmo and granite default to false).
    static let tiedByDefault: Set<String> = ["gpt2", "gemma", "gemma2", "gemma3_text", "opt", "falcon", "starcoder2",
                                             "cohere", "bloom", "t5", "bart", "smollm3", "mpt"]
    static let embeddingSuffixes = ["embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight"]
    static let headSuffixes = ["lm_head.weight", "embed_out.weight"]

    package static func detect(in base: TensorStore) throws -> VocabularyTensors {
        let names = base.entries.filter { $0.info.shape.count == 2 }.map(\.info.name)
        func unique(_ suffixes: [String]) -> String? {
            let hits = names.filter { n in suffixes.contains { n == $0 || n.hasSuffix("." + $0) } }
            return hits.count == 1 ? hits[0] : nil
        }
        let embedding = unique(embeddingSuffixes)
        let storedHead = unique(headSuffixes)
        var result = VocabularyTensors(embedding: embedding, head: storedHead ?? "lm_head.weight", headStored: storedHead != nil,
                                       tiedBecause: nil, configPath: nil)
        guard base.auxiliaryFiles.contains("config.json") else { return result }
        let path = FileSystem.join(base.directory, "config.json")
        result.configPath = path
        guard let config = try ModelConfig.read(at: path) else { return result }
        if let value = config["tie_word_embeddings"] {
            guard let tie = value.boolValue else {
                throw ModelConfigError(path: path, reason: "tie_word_embeddings is a JSON \(value.typeName), expected true or false")
            }
            if tie { result.tiedBecause = "tie_word_embeddings: true in config.json" }
        } else if let type = config["model_type"]?.stringValue, tiedByDefault.contains(type) {
            result.tiedBecause = "config.json has no tie_word_embeddings and transformers ties embeddings by default for model_type \(type)"
        }
        return result
    }
}

/// How the merge treats the tied pair, decided from the plan before anything is written.
struct TieResolution {
    /// The output projection gets its own output tensor (merged from the embedding's base rows).
    var addHead = false
    /// config.json fields to set.
    var configFields: [(key: String, value: JSONValue)] = []
    /// For the summary: "untied", "kept" or nil when the pair was not touched.
    var outcome: String?

    /// Applies `mode` to the plan's ops on the pair (keep moves the head's ops onto the
    /// embedding; untie leaves them on separate tensors).
    static func resolve(_ plan: inout MergePlan, vocab: VocabularyTensors, mode: TieMode) throws -> TieResolution {
        var resolution = TieResolution()
        guard vocab.tied, let embedding = vocab.embedding else { return resolution }
        let head = vocab.head
        let embedOps = plan.ops[embedding] ?? [], headOps = plan.ops[head] ?? []
        let embedResized = plan.resized[embedding], headResized = plan.resized[head]
        guard !embedOps.isEmpty || !headOps.isEmpty || embedResized != nil || headResized != nil else { return resolution }
        // Module names: a replaced tensor's name without ".weight", so a LoRA and its saved
        // base copy name one module.
        let named = (embedOps + headOps).map(\.module) + [embedResized?.module, headResized?.module].compactMap { $0 }
        let modules = Array(Set(named.map { $0.hasSuffix(".weight") ? String($0.dropLast(".weight".count)) : $0 })).sorted()
        // The same change on both sides keeps the pair tied (the adapted model shares it too).
        if Self.sameChange(embedOps, headOps) && Self.sameData(embedResized?.data, headResized?.data) {
            if vocab.headIsVirtual { plan.ops[head] = nil; plan.resized[head] = nil }
            return resolution
        }
        switch mode {
        case .refuse:
            throw PipelineError.unsupported("\(modules.joined(separator: ", ")): the adapted model no longer ties \(embedding) / \(head) (\(vocab.tiedBecause ?? "tied")); --tie-mode refuse stops here (untie writes both tensors, keep merges into the shared one)")
        case .keep:
            // PEFT saves each targeted side's base weight (base_layer): the head's copy of the
            // shared tensor would wipe the embedding's delta, so it is dropped.
            let headOps = headOps.filter { op in
                guard case let .replace(d) = op.action else { return true }
                return !embedOps.contains { if case let .replace(e) = $0.action { return Self.sameData(d, e) } else { return false } }
            }
            if vocab.headIsVirtual {
                plan.ops[head] = nil
                // A resized copy of the embedding wins over one of the output projection.
                if let r = headResized, embedResized == nil { plan.resized[embedding] = r }
                plan.resized[head] = nil
                if !headOps.isEmpty { plan.ops[embedding] = embedOps + headOps }
            } else {
                // Both stored: transformers ties them on load, so both get every change.
                plan.ops[embedding] = embedOps + headOps
                plan.ops[head] = embedOps + headOps
            }
            resolution.outcome = "kept"
            Warnings.emit("\(modules.joined(separator: ", ")): --tie-mode keep merged into the shared tensor \(embedding), which is also the output projection \(head): the merged model differs from the adapted model (use --tie-mode untie for its behaviour)")
        case .untie:
            resolution.addHead = vocab.headIsVirtual
            resolution.configFields.append(("tie_word_embeddings", .bool(false)))
            resolution.outcome = "untied"
            Warnings.emit("\(modules.joined(separator: ", ")): the adapted model no longer ties \(embedding) and \(head) (one side changes, or each differently): wrote both tensors as the adapted model uses them and set tie_word_embeddings: false in config.json")
        }
        return resolution
    }

    private static func sameChange(_ a: [MergeOp], _ b: [MergeOp]) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).allSatisfy { x, y in
            switch (x.action, y.action) {
            case let (.replace(p), .replace(q)): return sameData(p, q)
            case let (.addBias(p, s), .addBias(q, t)): return s == t && sameData(p, q)
            case let (.lora(m, l1, s1, _, _), .lora(n, l2, s2, _, _)):
                guard s1 == s2, m.magnitude == nil, n.magnitude == nil else { return false }
                if l1 == l2 { return sameData(m.a, n.a) && sameData(m.b, n.b) }
                // An embedding LoRA (ΔWᵀ = Aᵀ·Bᵀ) and an output LoRA with A' = Bᵀ, B' = Aᵀ
                // (PEFT's ensure_weight_tying) change the shared tensor identically.
                return sameTransposed(m.a, n.b) && sameTransposed(m.b, n.a)
            default: return false
            }
        }
    }

    private static func sameTransposed(_ x: TensorData, _ y: TensorData) -> Bool {
        guard x.shape.count == 2, y.shape == [x.shape[1], x.shape[0]], let p = try? x.floats(), let q = try? y.floats() else { return false }
        let rows = x.shape[0], cols = x.shape[1]
        for i in 0..<rows { for j in 0..<cols where p[i * cols + j] != q[j * rows + i] { return false } }
        return true
    }

    private static func sameData(_ a: TensorData?, _ b: TensorData?) -> Bool {
        switch (a, b) {
        case (nil, nil): return true
        case let (x?, y?): return x.shape == y.shape && (try? x.floats()) == (try? y.floats())
        default: return false
        }
    }
}
