import OpConvertCore
import OpConvertTensors

/// `op_config.json` of an OP checkpoint (format v1).
public struct OPConfig: Sendable {
    public var raw: JSONValue
    /// The adapter_config.json the materialized adapter will have.
    public var peftJSON: JSONValue
    public var peft: LoraConfig
    public var hidden: Int
    public var zDim: Int
    public var activation: String

    public static let fileName = "op_config.json"

    public init(path: String) throws {
        try InputCheck.requireFile(path, expected: "op_config.json, a JSON object")
        let json: JSONValue
        do { json = try JSONParser.parse(try FileSystem.readAll(path)) } catch let e as JSONParseError {
            throw OPError.invalidConfig(path: path, reason: "not valid JSON: \(e.message)")
        }
        try self.init(json: json, path: path)
    }

    public init(json: JSONValue, path: String) throws {
        raw = json
        guard let format = json["format"]?.stringValue, format == "op-lora" else {
            throw OPError.invalidConfig(path: path, reason: "\"format\" must be \"op-lora\"")
        }
        guard let version = json["format_version"] else { throw OPError.invalidConfig(path: path, reason: "missing \"format_version\"") }
        guard version.intValue == 1 else { throw OPError.unsupportedVersion(path: path, version: JSONWriter.serialize(version)) }
        guard let peftJSON = json["peft_config"], case .object = peftJSON else {
            throw OPError.invalidConfig(path: path, reason: "missing \"peft_config\" object")
        }
        self.peftJSON = peftJSON
        peft = try LoraConfig(json: peftJSON, path: path + " (peft_config)")
        peft.warnAboutDefaults(file: path + " (peft_config)")
        guard let mlp = json["mlp"], case .object = mlp else { throw OPError.invalidConfig(path: path, reason: "missing \"mlp\" object") }
        guard let h = mlp["hidden"]?.intValue, h > 0 else { throw OPError.invalidConfig(path: path, reason: "mlp.hidden must be a positive integer") }
        guard let z = mlp["z_dim"]?.intValue, z > 0 else { throw OPError.invalidConfig(path: path, reason: "mlp.z_dim must be a positive integer") }
        hidden = h
        zDim = z
        activation = mlp["activation"]?.stringValue ?? "relu"
        guard activation == "relu" else { throw OPError.unknownActivation(path: path, activation: activation) }
    }
}
