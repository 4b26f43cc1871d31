import OpConvertCore
import OpConvertTensors
import Foundation

/// The parts of a PEFT `adapter_config.json` that decide how a LoRA/DoRA adapter merges.
/// The full JSON is kept so that rewriting keeps fields opconvert does not know.
public struct LoraConfig: Sendable {
    public var raw: JSONValue
    public var peftType: String
    public var r: Int
    public var loraAlpha: Double
    public var useRSLoRA: Bool
    public var useDoRA: Bool
    public var fanInFanOut: Bool
    public var loraBias: Bool
    /// Ordered (pattern, value) pairs; the first pattern that matches a module wins.
    public var rankPattern: [(String, Int)]
    public var alphaPattern: [(String, Double)]
    public var modulesToSave: [String]

    public init(json: JSONValue, path: String) throws {
        guard case .object = json else { throw AdapterError.invalidConfig(path: path, reason: "top level is not an object") }
        raw = json
        guard let type = json["peft_type"]?.stringValue else {
            throw AdapterError.invalidConfig(path: path, reason: "missing \"peft_type\"")
        }
        peftType = type
        func int(_ key: String, _ def: Int) throws -> Int {
            guard let v = json[key], v != .null else { return def }
            guard let i = v.intValue else { throw AdapterError.invalidConfig(path: path, reason: "\"\(key)\" is a \(v.typeName), expected an integer") }
            return i
        }
        func number(_ key: String, _ def: Double) throws -> Double {
            guard let v = json[key], v != .null else { return def }
            guard let d = v.doubleValue else { throw AdapterError.invalidConfig(path: path, reason: "\"\(key)\" is a \(v.typeName), expected a number") }
            return d
        }
        func bool(_ key: String) throws -> Bool {
            guard let v = json[key], v != .null else { return false }
            guard let b = v.boolValue else { throw AdapterError.invalidConfig(path: path, reason: "\"\(key)\" is a \(v.typeName), expected true or false") }
            return b
        }
        r = try int("r", Self.peftDefaultR)
        loraAlpha = try number("lora_alpha", Self.peftDefaultAlpha)
        guard r > 0 else { throw AdapterError.invalidConfig(path: path, reason: "r must be positive, got \(r)") }
        useRSLoRA = try bool("use_rslora")
        useDoRA = try bool("use_dora")
        fanInFanOut = try bool("fan_in_fan_out")
        loraBias = try bool("lora_bias")
        rankPattern = try (json["rank_pattern"]?.objectValue ?? []).map { (k, v) in
            guard let i = v.intValue, i > 0 else { throw AdapterError.invalidConfig(path: path, reason: "rank_pattern[\"\(k)\"] must be a positive integer") }
            return (k, i)
        }
        alphaPattern = try (json["alpha_pattern"]?.objectValue ?? []).map { (k, v) in
            guard let d = v.doubleValue else { throw AdapterError.invalidConfig(path: path, reason: "alpha_pattern[\"\(k)\"] must be a number") }
            return (k, d)
        }
        switch json["modules_to_save"] {
        case let .array(items)?: modulesToSave = items.compactMap(\.stringValue)
        case let .string(s)?: modulesToSave = [s]
        default: modulesToSave = []
        }
    }

    /// PEFT's LoraConfig defaults, used when the JSON leaves r or lora_alpha out.
    public static let peftDefaultR = 8
    public static let peftDefaultAlpha = 8.0

    /// The keys that decide the scaling but are absent (or null), so PEFT's defaults apply.
    public var defaultedKeys: [String] {
        ["r", "lora_alpha"].filter { raw[$0] == nil || raw[$0] == .null }
    }

    /// Emits a warning for each scaling key filled in with PEFT's default: the adapter still
    /// loads in PEFT, but the scale may not be what its trainer used.
    public func warnAboutDefaults(file: String) {
        for key in defaultedKeys {
            let value = key == "r" ? String(Self.peftDefaultR) : String(format: "%g", Self.peftDefaultAlpha)
            Warnings.emit("\(file): \"\(key)\" is missing; using PEFT's default \(key) = \(value)")
        }
    }

    /// Refuses variants whose merge is not W + s·BA (with DoRA rescaling).
    public func checkMergeable(path: String) throws {
        guard peftType == "LORA" else {
            throw AdapterError.unsupported(path: path, reason: "peft_type \"\(peftType)\" is not LoRA/DoRA")
        }
        if let v = raw["layer_replication"], v != .null {
            throw AdapterError.unsupported(path: path, reason: "layer_replication duplicates base layers; the merged model would need a different architecture")
        }
        if let v = raw["alora_invocation_tokens"], v != .null {
            throw AdapterError.unsupported(path: path, reason: "aLoRA (alora_invocation_tokens) activates only after invocation tokens and cannot be folded into weights")
        }
        if let v = raw["target_parameters"], let items = v.arrayValue, !items.isEmpty {
            throw AdapterError.unsupported(path: path, reason: "target_parameters (LoRA on raw nn.Parameters) is not supported")
        }
        if let v = raw["init_lora_weights"]?.stringValue {
            let lower = v.lowercased()
            if ["pissa", "olora", "corda", "loftq", "eva"].contains(where: { lower.hasPrefix($0) }) {
                throw AdapterError.unsupported(path: path, reason: "init_lora_weights \"\(v)\" changes the base weights; convert the adapter to plain LoRA first (PEFT: save_pretrained(path_initial_model_for_weight_conversion=...))")
            }
        }
    }

    /// PEFT's per-module rank: the first rank_pattern key k with
    /// re.match(rf"(.*\.)?({k})$", module) wins.
    public func rank(for module: String) -> Int {
        for (k, v) in rankPattern where PatternMatch.matches(key: k, module: module) { return v }
        return r
    }

    public func alpha(for module: String) -> Double {
        for (k, v) in alphaPattern where PatternMatch.matches(key: k, module: module) { return v }
        return loraAlpha
    }

    /// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
    public func scaling(for module: String) -> Double {
        let r = Double(rank(for: module)), a = alpha(for: module)
        return useRSLoRA ? a / r.squareRoot() : a / r
    }
}

/// PEFT's pattern rule, re.match(rf"(.*\.)?({key})$", name), with the key as a regex.
enum PatternMatch {
    static func matches(key: String, module: String) -> Bool {
        let pattern = "^(.*\\.)?(\(key))$"
        guard let re = try? NSRegularExpression(pattern: pattern) else { return key == module }
        let range = NSRange(module.startIndex..., in: module)
        return re.firstMatch(in: module, options: [], range: range) != nil
    }
}
