import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// The README.md (Hugging Face model card) opconvert writes into a model directory it
/// makes: what it was made from and how, in place of the base's own card. No date and no
/// machine-specific facts: the same inputs give the same bytes.
public enum ModelCard {
    public struct Adapter: Sendable {
        public var path: String
        public var kind: String
        public var weight: Double
        public var modules: Int
    }

    /// Front matter fields of the base's card that stay true of the output.
    static let keptFields = ["license", "license_name", "license_link"]

    /// The top-level scalar `key: value` lines of a card's YAML front matter, by key.
    static func frontMatter(_ text: String) -> [String: String] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\r")) }
        guard lines.first == "---", let end = lines.dropFirst().firstIndex(of: "---") else { return [:] }
        var fields: [String: String] = [:]
        for line in lines[1..<end] where !line.hasPrefix(" ") && !line.hasPrefix("-") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon]).trimmingCharacters(in: .whitespaces)
            let value = String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            if !value.isEmpty { fields[key] = value }
        }
        return fields
    }

    /// "org/name" of a hub cache snapshot path (.../models--org--name/snapshots/REV), else nil.
    public static func hubID(ofSnapshot path: String) -> String? {
        let parts = FileSystem.absolute(path).split(separator: "/").map(String.init)
        guard parts.count >= 3, parts[parts.count - 2] == "snapshots", parts[parts.count - 3].hasPrefix("models--") else { return nil }
        let id = parts[parts.count - 3].dropFirst("models--".count).replacingOccurrences(of: "--", with: "/")
        return ModelSources.isHubID(id) ? id : nil
    }

    /// A scalar as YAML can read it back unchanged: plain when safe, else double-quoted.
    static func yamlScalar(_ s: String) -> String {
        let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_./".unicodeScalars.contains($0) }
            && !["true", "false", "null", "yes", "no", "on", "off"].contains(s.lowercased())
        return plain ? s : "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// Table cell text: one line, pipes escaped.
    static func cell(_ s: String) -> String {
        s.displayEscaped.replacingOccurrences(of: "|", with: "\\|")
    }

    /// The card. `command` is "merge" or "convert"; `base` the base/input as given.
    public static func render(command: String, base: TensorStore, basePath: String, adapters: [Adapter], dtype: FloatDType?,
                              version: String) -> String {
        let baseCard = base.auxiliaryFiles.first { $0.lowercased() == "readme.md" }
            .flatMap { try? FileSystem.readAll(FileSystem.join(base.directory, $0)) }
            .map { frontMatter(String(decoding: $0, as: UTF8.self)) } ?? [:]
        var yaml: [String] = []
        for key in keptFields { if let v = baseCard[key] { yaml.append("\(key): \(v)") } }
        // The model this one derives from, when it has a hub id to name it by.
        let baseID = hubID(ofSnapshot: basePath) ?? (ModelSources.isHubID(basePath) ? basePath : nil)
        if command == "merge" {
            if let baseID { yaml.append("base_model: \(yamlScalar(baseID))") }
            yaml.append("base_model_relation: merge")
        } else if let kept = baseCard["base_model"] {
            // A cast changes no weights' meaning: the card's lineage stays.
            yaml.append("base_model: \(kept)")
            if let relation = baseCard["base_model_relation"] { yaml.append("base_model_relation: \(relation)") }
        }
        yaml.append("library_name: transformers")
        yaml.append("tags:\n- opconvert\n- \(command == "merge" ? "merge" : "safetensors")")

        var out = "---\n" + yaml.joined(separator: "\n") + "\n---\n\n"
        let tensorsText = "\(base.tensorCount) tensors, \(formatBytes(base.totalBytes))"
        if command == "merge" {
            out += "# Merged model\n\nMade by opconvert \(version): `opconvert merge` folded \(adapters.count) adapter\(adapters.count == 1 ? "" : "s") into the base weights (W + s·B·A in f32, rounded once to each tensor's dtype).\n\n"
        } else {
            out += "# Converted model\n\nMade by opconvert \(version): `opconvert convert` re-wrote the weights (floats cast once, round to nearest even; everything else byte for byte).\n\n"
        }
        out += "## Inputs\n\n| role | path | format | size | weight |\n|---|---|---|---|---|\n"
        out += "| base | \(cell(baseID ?? basePath)) | safetensors (\(base.files.count) file\(base.files.count == 1 ? "" : "s")) | \(tensorsText) | |\n"
        for (i, a) in adapters.enumerated() {
            let weightsBytes = adapterWeightBytes(a.path)
            out += "| adapter \(i + 1) | \(cell(a.path)) | \(cell(a.kind)), \(a.modules) module\(a.modules == 1 ? "" : "s") | "
                + (weightsBytes.map { formatBytes($0) } ?? "") + " | \(JSONWriter.formatDouble(a.weight)) |\n"
        }
        out += "\n## Settings\n\n- dtype: " + (dtype.map { "\($0.rawValue) (every float tensor)" } ?? "each tensor's own") + "\n"
        out += "- opconvert version: \(version)\n"
        return out
    }

    /// The card of a PEFT adapter materialized from an OP checkpoint.
    public static func renderAdapter(checkpoint: String, checkpointBytes: Int, modules: Int, dora: Bool, base: String?, namedBase: String?,
                                     dtype: FloatDType, version: String) -> String {
        var yaml: [String] = []
        let baseID = base.flatMap { hubID(ofSnapshot: $0) } ?? namedBase.flatMap { ModelSources.isHubID($0) && !FileSystem.exists($0) ? $0 : nil }
        if let baseID { yaml.append("base_model: \(yamlScalar(baseID))") }
        yaml.append("base_model_relation: adapter")
        yaml.append("library_name: peft")
        yaml.append("tags:\n- opconvert\n- \(dora ? "dora" : "lora")")
        var out = "---\n" + yaml.joined(separator: "\n") + "\n---\n\n"
        out += "# Materialized \(dora ? "DoRA" : "LoRA") adapter\n\nMade by opconvert \(version): `opconvert materialize` ran each module's OP hypernetwork once in f32 and stored the resulting factors (\(modules) module\(modules == 1 ? "" : "s")).\n\n"
        out += "## Inputs\n\n| role | path | size |\n|---|---|---|\n"
        out += "| checkpoint | \(cell(checkpoint)) | \(formatBytes(checkpointBytes)) |\n"
        if let base { out += "| base (shapes) | \(cell(hubID(ofSnapshot: base) ?? base)) | |\n" }
        out += "\n## Settings\n\n- dtype: \(dtype.rawValue)\n- opconvert version: \(version)\n"
        return out
    }

    /// The adapter's weights file size (its safetensors or GGUF file), or nil when unknown.
    static func adapterWeightBytes(_ path: String) -> Int? {
        if FileSystem.isRegularFile(path) { return try? FileSystem.fileSize(path) }
        let names = ((try? FileSystem.list(path)) ?? []).filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.zst") || $0.hasSuffix(".gguf") }
        guard !names.isEmpty else { return nil }
        return names.reduce(0) { $0 + ((try? FileSystem.fileSize(FileSystem.join(path, $1))) ?? 0) }
    }
}

extension ModelWriter {
    /// Puts `card` in the output directory as README.md, in place of a carried README.md.
    public mutating func setModelCard(_ card: String) {
        guard case .directory = target else { return }
        extraFiles.removeAll { $0.name.lowercased() == "readme.md" }
        extraFiles.append((source: nil, name: "README.md", contents: Array(card.utf8)))
    }
}
