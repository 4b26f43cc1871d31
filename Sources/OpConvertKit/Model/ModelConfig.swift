/// Reading and minimally rewriting a transformers `config.json`.
public enum ModelConfig {
    /// The config with its dtype field ("dtype" in transformers 5, "torch_dtype" before)
    /// set to `torchName`, written as transformers writes configs. Byte-identical copy
    /// when the field already says so or is absent.
    public static func rewritingDType(at path: String, to torchName: String) throws -> [UInt8] {
        let bytes = try FileSystem.readAll(path)
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch {
            throw PipelineError.invalidArgument("\(path): not valid JSON: \(error.message)")
        }
        var updated = root
        var changed = false
        for key in ["dtype", "torch_dtype"] {
            if let v = root[key], v.stringValue != torchName {
                updated = updated.setting(key, to: .string(torchName))
                changed = true
            }
        }
        guard changed else { return bytes }
        return Array((JSONWriter.serialize(updated, style: .python(indent: 2, sortKeys: true)) + "\n").utf8)
    }
}
