import OpConvertCore
import OpConvertTensors
import COpenBLAS
import Foundation

/// One per-module hypernetwork: h = ReLU(W1 z + c1); v = W2 h + c2.
public struct OPMLP: Sendable {
    public var z: TensorData
    public var fc1Weight: TensorData
    public var fc1Bias: TensorData
    public var fc2Weight: TensorData
    public var fc2Bias: TensorData

    /// Length of the generated vector v.
    public var outputSize: Int { fc2Weight.shape.first ?? 0 }
    public var parameterCount: Int { [z, fc1Weight, fc1Bias, fc2Weight, fc2Bias].reduce(0) { $0 + $1.elementCount } }
}

/// An adapted module of an OP checkpoint.
public struct OPModule: Sendable {
    public enum Generator: Sendable {
        /// One MLP whose output is A (r x in) then B (out x r).
        case joint(OPMLP)
        /// The paper's separate-MLP variant: one MLP for A, one for B.
        case separate(a: OPMLP, b: OPMLP)
    }
    /// Module path without `base_model.model.`.
    public var path: String
    public var generator: Generator
    /// OP-DoRA magnitude head on the (joint or A-side) hidden layer, plus optional offset.
    public var magnitudeWeight: TensorData?
    public var magnitudeBias: TensorData?
    public var magnitudeOffset: TensorData?
    public var rank: Int

    public var isDoRA: Bool { magnitudeWeight != nil }

    /// Number of values the module's A, B (and m) hold once materialized.
    public var inferenceParameters: Int {
        let ab: Int
        switch generator {
        case let .joint(m): ab = m.outputSize
        case let .separate(a, b): ab = a.outputSize + b.outputSize
        }
        return ab + (magnitudeWeight?.shape.first ?? 0)
    }

    public var trainParameters: Int {
        var n: Int
        switch generator {
        case let .joint(m): n = m.parameterCount
        case let .separate(a, b): n = a.parameterCount + b.parameterCount
        }
        for t in [magnitudeWeight, magnitudeBias] { n += t?.elementCount ?? 0 }
        return n
    }
}

/// An OP checkpoint directory: op_config.json + op_model.safetensors(.zst).
public final class OPCheckpoint: Sendable {
    public let path: String
    public let config: OPConfig
    public let store: TensorStore
    public let modules: [OPModule]
    /// `op_module_shapes` from the weights' metadata (written by opconvert's trainer):
    /// module path -> [out, in...] of the adapted weight.
    public let recordedShapes: [String: [Int]]

    public static let weightsName = "op_model.safetensors"

    /// The checkpoint's weights: op_model.safetensors, else op_model.safetensors.zst.
    public static func weightsFile(in directory: String) -> String? {
        let plain = FileSystem.join(directory, weightsName)
        return [plain, plain + ".zst"].first(where: FileSystem.isRegularFile)
    }

    public static func isCheckpoint(_ path: String) -> Bool {
        FileSystem.isRegularFile(FileSystem.join(path, OPConfig.fileName))
    }

    public init(path: String, keyMap: KeyMap? = nil) throws {
        self.path = path
        try InputCheck.requireOPCheckpoint(path)
        config = try OPConfig(path: FileSystem.join(path, OPConfig.fileName))
        guard let weights = Self.weightsFile(in: path) else {
            throw OPError.invalidConfig(path: path, reason: "no \(Self.weightsName) or \(Self.weightsName).zst beside op_config.json")
        }
        let store = try TensorStore.open(weights)
        self.store = store
        var named: [(String, TensorData)] = store.entries.map { (keyMap?.apply($0.info.name) ?? $0.info.name, TensorData.stored(store, $0)) }
        named.sort { $0.0 < $1.0 }
        modules = try Self.group(named, config: config, path: path)
        var shapes: [String: [Int]] = [:]
        if let text = store.metadata?["op_module_shapes"], let json = try? JSONParser.parse(text), let obj = json.objectValue {
            for (k, v) in obj { if let dims = v.arrayValue?.compactMap(\.intValue) { shapes[k] = dims } }
        }
        recordedShapes = shapes
    }

    private static let prefix = "base_model.model."

    /// Groups `<prefix><module>.op_mlp[_A|_B].<part>` tensors into modules and checks the
    /// hypernetwork shapes against op_config.json.
    static func group(_ tensors: [(String, TensorData)], config: OPConfig, path: String) throws -> [OPModule] {
        var parts: [String: [String: TensorData]] = [:]
        var order: [String] = []
        var unknown: [String] = []
        for (name, data) in tensors {
            let bare = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name
            guard let range = bare.range(of: ".op_mlp", options: .backwards) else { unknown.append(name); continue }
            let module = String(bare[..<range.lowerBound])
            let part = String(bare[range.lowerBound...].dropFirst())   // "op_mlp.fc1.weight", "op_mlp_A.z", ...
            if parts[module] == nil { parts[module] = [:]; order.append(module) }
            parts[module]![part] = data
        }
        if order.isEmpty {
            throw OPError.unrecognizedNames(path: path, sample: Array(tensors.prefix(4).map(\.0)))
        }
        if let stray = unknown.first {
            throw OPError.badShape(path: path, module: stray, reason: "tensor name does not follow the OP v1 layout (<module>.op_mlp.<part>)")
        }
        return try order.map { module in
            let p = parts[module]!
            func mlp(_ head: String) throws -> OPMLP {
                func need(_ sub: String) throws -> TensorData {
                    guard let t = p["\(head).\(sub)"] else { throw OPError.missingTensor(path: path, module: module, tensor: "\(head).\(sub)") }
                    guard t.dtype.isDecodableFloat else {
                        throw OPError.badShape(path: path, module: module, reason: "\(head).\(sub) has dtype \(t.dtype.rawValue), expected F32, BF16 or F16")
                    }
                    return t
                }
                let m = OPMLP(z: try need("z"), fc1Weight: try need("fc1.weight"), fc1Bias: try need("fc1.bias"),
                              fc2Weight: try need("fc2.weight"), fc2Bias: try need("fc2.bias"))
                try check(m, head: head, module: module, config: config, path: path)
                return m
            }
            let generator: OPModule.Generator
            if p.keys.contains(where: { $0.hasPrefix("op_mlp_A.") }) {
                generator = .separate(a: try mlp("op_mlp_A"), b: try mlp("op_mlp_B"))
            } else {
                generator = .joint(try mlp("op_mlp"))
            }
            let rank = config.peft.rank(for: module)
            var m = OPModule(path: module, generator: generator, magnitudeWeight: p["op_mlp.magnitude.weight"],
                             magnitudeBias: p["op_mlp.magnitude.bias"], magnitudeOffset: p["op_mlp.magnitude_offset"], rank: rank)
            if m.magnitudeWeight != nil || m.magnitudeBias != nil {
                guard let w = m.magnitudeWeight, let b = m.magnitudeBias else {
                    throw OPError.missingTensor(path: path, module: module, tensor: m.magnitudeWeight == nil ? "op_mlp.magnitude.weight" : "op_mlp.magnitude.bias")
                }
                guard w.shape.count == 2, w.shape[1] == config.hidden, b.shape == [w.shape[0]] else {
                    throw OPError.badShape(path: path, module: module, reason: "magnitude head \(w.shape) / bias \(b.shape) do not fit hidden size \(config.hidden)")
                }
                if let o = m.magnitudeOffset, o.shape != [w.shape[0]] {
                    throw OPError.badShape(path: path, module: module, reason: "magnitude_offset has shape \(o.shape), expected [\(w.shape[0])]")
                }
            } else {
                m.magnitudeOffset = nil
            }
            switch generator {
            case let .joint(g):
                guard g.outputSize % rank == 0 else {
                    throw OPError.badShape(path: path, module: module, reason: "fc2 produces \(g.outputSize) values, not a multiple of r = \(rank) (expected r*in + out*r)")
                }
            case let .separate(a, b):
                guard a.outputSize % rank == 0, b.outputSize % rank == 0 else {
                    throw OPError.badShape(path: path, module: module, reason: "op_mlp_A/op_mlp_B produce \(a.outputSize)/\(b.outputSize) values, not multiples of r = \(rank)")
                }
            }
            return m
        }
    }

    private static func check(_ m: OPMLP, head: String, module: String, config: OPConfig, path: String) throws {
        let h = config.hidden, z = config.zDim
        func fail(_ r: String) -> OPError { .badShape(path: path, module: module, reason: r) }
        guard m.z.shape == [z] else { throw fail("\(head).z has shape \(m.z.shape) but op_config.json says z_dim = \(z)") }
        guard m.fc1Weight.shape == [h, z] else { throw fail("\(head).fc1.weight has shape \(m.fc1Weight.shape), expected [hidden, z_dim] = [\(h), \(z)]") }
        guard m.fc1Bias.shape == [h] else { throw fail("\(head).fc1.bias has shape \(m.fc1Bias.shape), expected [\(h)]") }
        guard m.fc2Weight.shape.count == 2, m.fc2Weight.shape[1] == h else {
            throw fail("\(head).fc2.weight has shape \(m.fc2Weight.shape), expected [r*in + out*r, hidden = \(h)] (hidden size inconsistent with fc1)")
        }
        guard m.fc2Bias.shape == [m.fc2Weight.shape[0]] else {
            throw fail("\(head).fc2.bias has shape \(m.fc2Bias.shape), expected [\(m.fc2Weight.shape[0])]")
        }
    }

    public var trainParameters: Int { modules.reduce(0) { $0 + $1.trainParameters } }
    public var inferenceParameters: Int { modules.reduce(0) { $0 + $1.inferenceParameters } }
    public var isDoRA: Bool { modules.contains { $0.isDoRA } }
}
