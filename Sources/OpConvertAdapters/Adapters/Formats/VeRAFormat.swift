import Foundation
import OpConvertCore
import OpConvertTensors

/// PEFT VeRA adapters (peft_type "VERA"): adapter_config.json + adapter_model.safetensors
/// with per-module scaling vectors `base_model.model.<module>.vera_lambda_b` (out) and
/// `.vera_lambda_d` (r), and one shared pair of random projections `base_model.vera_A`
/// (r, max_in) and `base_model.vera_B` (max_out, r), saved when save_projection is true and
/// otherwise regenerated from projection_prng_key with torch's CPU generator.
///
/// PEFT's delta is ΔW = (λ_b ⊙ B[:out]) @ (λ_d ⊙ A[:, :in]) with no scaling (transposed
/// for fan_in_fan_out), so each module opens as a LoRA module with A' = λ_d ⊙ A[:, :in],
/// B' = λ_b ⊙ B[:out, :] and scaling 1: merge and `convert --to peft` (alpha = r) need
/// nothing VeRA-specific.
public enum VeRAFormat: AdapterFormat {
    public static let id = AdapterFormatID.vera
    public static let expected = "a PEFT VeRA adapter directory (adapter_config.json with peft_type VERA + adapter_model.safetensors)"
    static let configName = "adapter_config.json"
    static let weightsName = "adapter_model.safetensors"
    static let prefix = "base_model.model."
    static let projectionA = "base_model.vera_A"
    static let projectionB = "base_model.vera_B"

    /// A directory whose adapter_config.json says peft_type "VERA". An unreadable config is
    /// left to PEFTFormat, which names what is wrong with it.
    public static func probe(_ path: String) -> Bool {
        let configPath = FileSystem.join(path, configName)
        guard FileSystem.isDirectory(path), FileSystem.isRegularFile(configPath),
              let bytes = try? FileSystem.readAll(configPath), let json = try? JSONParser.parse(bytes) else { return false }
        return json["peft_type"]?.stringValue == "VERA"
    }

    /// The parts of a VeraConfig that decide the delta (PEFT's defaults where absent).
    struct Config {
        var r: Int
        var saveProjection: Bool
        var projectionKey: UInt64
        var fanInFanOut: Bool

        init(json: JSONValue, path: String) throws {
            guard case .object = json else { throw AdapterError.invalidConfig(path: path, reason: "top level is not an object") }
            func value(_ key: String) -> JSONValue? {
                guard let v = json[key], v != .null else { return nil }
                return v
            }
            func bool(_ key: String, _ def: Bool) throws -> Bool {
                guard let v = value(key) else { return def }
                guard let b = v.boolValue else { throw AdapterError.invalidConfig(path: path, reason: "\"\(key)\" is a \(v.typeName), expected true or false") }
                return b
            }
            if let v = value("r") {
                guard let i = v.intValue, i > 0 else { throw AdapterError.invalidConfig(path: path, reason: "\"r\" must be a positive integer") }
                r = i
            } else {
                r = 256
                Warnings.emit("\(path): \"r\" is missing; using PEFT's VeRA default r = 256")
            }
            saveProjection = try bool("save_projection", true)
            fanInFanOut = try bool("fan_in_fan_out", false)
            switch value("projection_prng_key") {
            case nil: projectionKey = 0
            case let .int(i)?: projectionKey = UInt64(bitPattern: i)
            case let .uint(u)?: projectionKey = u
            case let v?: throw AdapterError.invalidConfig(path: path, reason: "\"projection_prng_key\" is a \(v.typeName), expected an integer")
            }
            if let bias = value("bias")?.stringValue, bias != "none" {
                throw AdapterError.unsupported(path: path, reason: "VeRA bias \"\(bias)\" trains the base biases; only bias \"none\" is supported")
            }
        }
    }

    /// The adapter's tensors, grouped and checked without the base.
    struct Parsed {
        var config: Config
        var store: TensorStore
        var modules: [(path: String, lambdaB: TensorData, lambdaD: TensorData)]
        /// nil when save_projection is false (regenerated from the seed).
        var projections: (a: TensorData, b: TensorData)?
        var replacements: [(name: String, data: TensorData)]
    }

    static func parse(_ path: String) throws -> Parsed {
        let configPath = FileSystem.join(path, configName)
        guard FileSystem.isRegularFile(configPath) else {
            try InputCheck.requireAdapterDirectory(path)
            throw AdapterError.missingConfig(path: path)
        }
        let config = try Config(json: try PEFTFormat.readJSON(configPath), path: configPath)
        let store = try PEFTFormat.openWeights(path)
        var lambdaB: [String: TensorData] = [:], lambdaD: [String: TensorData] = [:]
        var order: [String] = []
        var projA: TensorData?, projB: TensorData?
        var replacements: [(name: String, data: TensorData)] = []
        for entry in store.entries {
            let key = entry.info.name, data = TensorData.stored(store, entry)
            if key == projectionA { projA = data; continue }
            if key == projectionB { projB = data; continue }
            let name = key.hasPrefix(prefix) ? String(key.dropFirst(prefix.count)) : key
            var module: String
            let isB: Bool
            if name.hasSuffix(".vera_lambda_b") {
                module = String(name.dropLast(".vera_lambda_b".count)); isB = true
            } else if name.hasSuffix(".vera_lambda_d") {
                module = String(name.dropLast(".vera_lambda_d".count)); isB = false
            } else {
                // modules_to_save copies replace their base tensors, as in PEFT LoRA.
                replacements.append((name.replacingOccurrences(of: ".base_layer.", with: "."), data))
                continue
            }
            if module.hasSuffix(".default") { module = String(module.dropLast(".default".count)) }
            if lambdaB[module] == nil && lambdaD[module] == nil { order.append(module) }
            if isB { lambdaB[module] = data } else { lambdaD[module] = data }
        }
        var modules: [(path: String, lambdaB: TensorData, lambdaD: TensorData)] = []
        for m in order {
            guard let b = lambdaB[m], let d = lambdaD[m] else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: lambdaB[m] == nil ? "vera_lambda_b is missing" : "vera_lambda_d is missing")
            }
            for (t, label) in [(b, "vera_lambda_b"), (d, "vera_lambda_d")] {
                guard t.shape.count == 1 else {
                    throw AdapterError.invalidTensors(path: path, module: m, reason: "\(label) has shape \(t.shape), expected a vector")
                }
                guard t.dtype.isDecodableFloat else {
                    throw AdapterError.invalidTensors(path: path, module: m, reason: "\(label) has dtype \(t.dtype.rawValue), expected a float type")
                }
            }
            guard d.elementCount == config.r else {
                throw AdapterError.invalidTensors(path: path, module: m, reason: "vera_lambda_d has \(d.elementCount) values, but r = \(config.r) in adapter_config.json")
            }
            modules.append((m, b, d))
        }
        if modules.isEmpty {
            throw AdapterError.invalidConfig(path: path, reason: "\(weightsName) holds no vera_lambda_b / vera_lambda_d tensors")
        }
        var projections: (a: TensorData, b: TensorData)?
        if config.saveProjection {
            guard let a = projA, let b = projB else {
                throw AdapterError.invalidTensors(path: path, module: projA == nil ? projectionA : projectionB,
                                                  reason: "save_projection is true in adapter_config.json but \(weightsName) has no \(projA == nil ? projectionA : projectionB)")
            }
            for (t, label, rankAxis) in [(a, projectionA, 0), (b, projectionB, 1)] {
                guard t.shape.count == 2, t.dtype.isDecodableFloat else {
                    throw AdapterError.invalidTensors(path: path, module: label, reason: "has shape \(t.shape) and dtype \(t.dtype.rawValue), expected a float matrix")
                }
                guard t.shape[rankAxis] == config.r else {
                    throw AdapterError.invalidTensors(path: path, module: label, reason: "has shape \(t.shape); dimension \(rankAxis) should be r = \(config.r)")
                }
            }
            projections = (a, b)
        }
        return Parsed(config: config, store: store, modules: modules, projections: projections, replacements: replacements)
    }

    /// `options.base` is required: VeRA stores no module's input size (vera_A is as wide as
    /// the widest module), so each module's slice comes from its base weight.
    public static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter {
        let p = try parse(path)
        guard let base = options.base else { throw NeedsBase(path: path) }
        let r = p.config.r
        let resolver = SuffixModuleNaming().resolver(baseNames: base.entries.map(\.info.name))
        // (out, in) of every module's base weight, and the weights' dtypes.
        var dims: [(out: Int, in: Int)] = []
        var weightDTypes: [DType] = []
        for m in p.modules {
            let weight: String
            switch resolver.resolve(m.path + ".weight") {
            case let .found(name): weight = name
            case .none: throw AdapterError.unmatchedModules(adapter: path, modules: [m.path], hint: "")
            case let .ambiguous(c): throw AdapterError.ambiguousModule(adapter: path, module: m.path, candidates: c)
            }
            guard let info = base.entry(named: weight)?.info, info.shape.count == 2 else {
                throw AdapterError.shapeMismatch(adapter: path, module: m.path, reason: "base tensor \(weight) is not a weight matrix; VeRA adapts linear layers only")
            }
            let w = info.shape
            let d = p.config.fanInFanOut ? (out: w[1], in: w[0]) : (out: w[0], in: w[1])
            guard m.lambdaB.elementCount == d.out else {
                throw AdapterError.shapeMismatch(adapter: path, module: m.path, reason: "vera_lambda_b has \(m.lambdaB.elementCount) values but base tensor \(weight) has \(d.out) output features")
            }
            dims.append(d)
            if !weightDTypes.contains(info.dtype) { weightDTypes.append(info.dtype) }
        }
        let a: [Float], b: [Float], aColumns: Int, bRows: Int
        if let saved = p.projections {
            a = try saved.a.floats(); b = try saved.b.floats()
            aColumns = saved.a.shape[1]; bRows = saved.b.shape[0]
        } else {
            // PEFT's _init_vera_A_vera_B: shapes from the largest adapted layer, then vera_A
            // (r, max_in) and vera_B (max_out, r) drawn in that order from one generator.
            aColumns = dims.map(\.in).max() ?? 0
            bRows = dims.map(\.out).max() ?? 0
            var generator = TorchGenerator(seed: p.config.projectionKey)
            // PEFT then casts them to the adapted layers' dtype (and back up to f32), so on a
            // bf16/f16 base they are rounded once to it. Saved projections are loaded after
            // that cast, into f32 buffers, and are used as stored.
            let dtype = try projectionDType(weightDTypes, path: path)
            a = roundTrip(generator.kaimingUniformFloat32(rows: r, columns: aColumns), through: dtype)
            b = roundTrip(generator.kaimingUniformFloat32(rows: bRows, columns: r), through: dtype)
        }
        var modules: [LoraModule] = []
        for (m, d) in zip(p.modules, dims) {
            guard d.in <= aColumns, d.out <= bRows else {
                throw AdapterError.shapeMismatch(adapter: path, module: m.path, reason: "base weight is \(d.out)x\(d.in) but the projections vera_A (\(r), \(aColumns)) and vera_B (\(bRows), \(r)) are smaller")
            }
            let ld = try m.lambdaD.floats(), lb = try m.lambdaB.floats()
            // PEFT (CPU; 16-bit tensors cast to f32 first) forms lambda_d * A[:, :in] and
            // lambda_b * B[:out] as f32 products, one rounding each, and multiplies the two;
            // the same f32 products here make the PEFT LoRA written from them merge, in
            // PEFT, to the very bits of PEFT's VeRA merge.
            var aPrime = [Float](repeating: 0, count: r * d.in)
            for i in 0..<r {
                for j in 0..<d.in { aPrime[i * d.in + j] = ld[i] * a[i * aColumns + j] }
            }
            var bPrime = [Float](repeating: 0, count: d.out * r)
            for o in 0..<d.out {
                for i in 0..<r { bPrime[o * r + i] = lb[o] * b[o * r + i] }
            }
            modules.append(LoraModule(path: m.path, a: .memory(values: aPrime, shape: [r, d.in]),
                                      b: .memory(values: bPrime, shape: [d.out, r]),
                                      rank: r, scaling: 1, fanInFanOut: p.config.fanInFanOut))
        }
        return Adapter(path: path, kind: .peftVera, modules: modules, replacements: p.replacements, details: details(p))
    }

    /// The one dtype the regenerated projections take: the adapted base weights'.
    static func projectionDType(_ dtypes: [DType], path: String) throws -> DType {
        guard dtypes.count == 1, let dtype = dtypes.first else {
            throw AdapterError.unsupported(path: path, reason: "save_projection is false and the adapted base weights mix dtypes (\(dtypes.map(\.rawValue).joined(separator: ", "))); PEFT's regenerated projections would then depend on module order")
        }
        guard [.f32, .f64, .bf16, .f16].contains(dtype) else {
            throw AdapterError.unsupported(path: path, reason: "save_projection is false and the adapted base weights are \(dtype.rawValue); only f32, f64, bf16 and f16 bases are supported")
        }
        return dtype
    }

    /// `values` rounded to `dtype` (to nearest even) and widened back; f32/f64 keep them.
    static func roundTrip(_ values: [Float], through dtype: DType) -> [Float] {
        guard dtype == .bf16 || dtype == .f16, !values.isEmpty else { return values }
        var narrow = [UInt16](repeating: 0, count: values.count)
        var out = [Float](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { src in
            narrow.withUnsafeMutableBytes { DTypeConversion.encode(src.baseAddress!, to: $0.baseAddress!, dtype, count: values.count) }
        }
        narrow.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { DTypeConversion.decode(src.baseAddress!, dtype, to: $0.baseAddress!, count: values.count) }
        }
        return out
    }

    static func details(_ p: Parsed) -> [String: String] {
        var d = ["peft_type": "VERA", "r": String(p.config.r), "save_projection": String(p.config.saveProjection),
                 "projection_prng_key": String(p.config.projectionKey), "fan_in_fan_out": String(p.config.fanInFanOut),
                 "modules": String(p.modules.count), "modules_to_save": String(p.replacements.count)]
        if let (a, b) = p.projections {
            d["vera_A"] = "\(a.shape) \(a.dtype.rawValue)"
            d["vera_B"] = "\(b.shape) \(b.dtype.rawValue)"
        } else {
            d["projections"] = "regenerated from projection_prng_key (torch CPU generator)"
        }
        return d
    }

    /// Lists the modules (rank r; parameters: the two trained vectors) without the base.
    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        let p = try parse(path)
        return AdapterSummary(kind: "peft-vera-adapter", weightsFile: FileSystem.join(path, weightsName), details: details(p),
                              modules: p.modules.map {
                                  .init(name: $0.path, rank: p.config.r, inferenceParameters: $0.lambdaB.elementCount + $0.lambdaD.elementCount)
                              })
    }

    /// Opening needs the base model's shapes and none was given.
    public struct NeedsBase: CategorizedError, Sendable {
        public var path: String
        public var category: ErrorCategory { .usage }
        public var description: String {
            "\(path): a VeRA adapter does not record its modules' input sizes; pass the base model (--base DIR) to convert it"
        }
    }
}
