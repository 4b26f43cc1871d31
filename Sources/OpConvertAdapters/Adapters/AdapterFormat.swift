import Foundation
import OpConvertCore
import OpConvertTensors

/// The adapter file formats opconvert knows. Each is one `AdapterFormat` type, listed once
/// in `AdapterRegistry.formats`.
public enum AdapterFormatID: String, CaseIterable, Sendable, Codable {
    /// diffusers LoRA: pytorch_lora_weights.safetensors with unet./text_encoder. keys.
    case diffusers
    /// PEFT LoRA/DoRA: adapter_config.json + adapter_model.safetensors.
    case peft
    /// OP-LoRA/OP-DoRA checkpoint v1: op_config.json + op_model.safetensors[.zst].
    case op
    /// PEFT VeRA (peft_type VERA): shared random projections, per-module scaling vectors.
    case vera
    /// mlx-lm: adapter_config.json + adapters.safetensors.
    case mlx
    /// llama.cpp's GGUF LoRA adapter (general.type = adapter).
    case gguf
    /// kohya/A1111 LoRA, LoCon and LyCORIS: one .safetensors with lora_unet_/lora_te_ keys.
    case kohya
}

/// What an opened adapter is, as merge summaries and `--json` name it.
public enum AdapterKind: String, CaseIterable, Sendable, Codable {
    case diffusersLora = "diffusers-lora", diffusersDora = "diffusers-dora"
    case peftLora = "peft-lora", peftDora = "peft-dora"
    case opLora = "op-lora", opDora = "op-dora"
    case peftVera = "peft-vera"
    case mlxLora = "mlx-lora", mlxDora = "mlx-dora", mlxFull = "mlx-full"
    case ggufLora = "gguf-lora"
    case kohyaLora = "kohya-lora", kohyaLocon = "kohya-locon", kohyaDora = "kohya-dora", lycoris = "lycoris"
}

/// One adapter in opconvert's neutral form: what it changes in which base tensor, with no
/// trace of the file format left except for `details` (shown by inspect) and `naming`
/// (how its module names find base tensors).
public struct Adapter: Sendable {
    /// Where it came from, for messages.
    public var path: String
    public var kind: AdapterKind
    /// Low-rank changes W += s·B·A (with DoRA's magnitude and a bias when present).
    public var modules: [LoraModule]
    /// Full tensors that replace base tensors (modules_to_save), by base-relative name.
    public var replacements: [(name: String, data: TensorData)]
    /// Full deltas W += scale·D (kohya's `diff`, extracted deltas), by base-relative name.
    public var deltas: [FullDelta]
    /// How module and tensor names of this adapter are matched to the base's names.
    public var naming: any ModuleNaming
    /// Format facts for `inspect` (config values, counts), as text.
    public var details: [String: String]

    public init(path: String, kind: AdapterKind, modules: [LoraModule], replacements: [(name: String, data: TensorData)] = [],
                deltas: [FullDelta] = [], naming: any ModuleNaming = SuffixModuleNaming(), details: [String: String] = [:]) {
        self.path = path
        self.kind = kind
        self.modules = modules
        self.replacements = replacements
        self.deltas = deltas
        self.naming = naming
        self.details = details
    }

    /// True when any module carries a DoRA magnitude.
    public var usesDoRA: Bool { modules.contains { $0.magnitude != nil } }
}

/// The name the PEFT-only adapter type had; the neutral `Adapter` replaced it.
public typealias LoraAdapter = Adapter

/// One low-rank module: ΔW = scaling·B·A, in PEFT's orientation (A [r, in...], B [out, r]).
public struct LoraModule: Sendable {
    /// The module's path in transformers' naming where the format can give it (PEFT, MLX,
    /// GGUF after its name map: model.layers.0.self_attn.q_proj, no `base_model.model.`);
    /// `Adapter.naming` resolves it against the base's tensor names.
    public var path: String
    public var a: TensorData
    public var b: TensorData
    /// Saved as lora_embedding_A/B: the delta is transposed against the weight.
    public var isEmbedding: Bool
    /// `lora_B.bias` (lora_bias=True).
    public var bias: TensorData?
    /// DoRA's magnitude vector.
    public var magnitude: TensorData?
    public var rank: Int
    public var scaling: Double
    /// The base weight is stored [in, out] (GPT-2 Conv1D; PEFT's fan_in_fan_out): decides
    /// square weights, where both orientations fit.
    public var fanInFanOut: Bool

    public init(path: String, a: TensorData, b: TensorData, isEmbedding: Bool = false, bias: TensorData? = nil,
                magnitude: TensorData? = nil, rank: Int, scaling: Double, fanInFanOut: Bool = false) {
        self.path = path
        self.a = a
        self.b = b
        self.isEmbedding = isEmbedding
        self.bias = bias
        self.magnitude = magnitude
        self.rank = rank
        self.scaling = scaling
        self.fanInFanOut = fanInFanOut
    }
}

/// W += scale·delta for a whole base tensor.
public struct FullDelta: Sendable {
    /// Base-relative tensor name (resolved through `Adapter.naming`).
    public var name: String
    public var data: TensorData
    public var scale: Double

    public init(name: String, data: TensorData, scale: Double) {
        self.name = name
        self.data = data
        self.scale = scale
    }
}

/// What opening an adapter may need besides its path.
public struct AdapterOpenOptions: Sendable {
    /// The base the adapter will be applied to: module shapes (OP checkpoints), head counts
    /// (GGUF's rotary permutation), names.
    public var base: TensorStore?
    /// Rename rules for OP checkpoints saved by other trainers.
    public var keyMap: KeyMap?

    public init(base: TensorStore? = nil, keyMap: KeyMap? = nil) {
        self.base = base
        self.keyMap = keyMap
    }
}

/// What `inspect` shows of an adapter, beyond its tensors.
public struct AdapterSummary: Sendable {
    /// The report's kind ("peft-adapter", "op-checkpoint", ...).
    public var kind: String
    /// The safetensors file whose tensors are listed; nil for formats that list their own.
    public var weightsFile: String?
    /// Tensors of a non-safetensors container (GGUF), listed as given.
    public var tensors: [TensorInfo]?
    public var details: [String: String]
    public var modules: [Module]

    public struct Module: Sendable {
        public var name: String
        public var rank: Int
        /// OP checkpoints: hypernetwork parameters.
        public var trainParameters: Int?
        public var inferenceParameters: Int

        public init(name: String, rank: Int, trainParameters: Int? = nil, inferenceParameters: Int) {
            self.name = name
            self.rank = rank
            self.trainParameters = trainParameters
            self.inferenceParameters = inferenceParameters
        }
    }

    public init(kind: String, weightsFile: String?, tensors: [TensorInfo]? = nil, details: [String: String], modules: [Module]) {
        self.kind = kind
        self.weightsFile = weightsFile
        self.tensors = tensors
        self.details = details
        self.modules = modules
    }

    /// The generic summary of an opened adapter: its modules with A, B (and m) sizes.
    public static func of(_ adapter: Adapter, kind: String, weightsFile: String?) -> AdapterSummary {
        AdapterSummary(kind: kind, weightsFile: weightsFile, details: adapter.details, modules: adapter.modules.map {
            Module(name: $0.path, rank: $0.rank,
                   inferenceParameters: $0.a.elementCount + $0.b.elementCount + ($0.magnitude?.elementCount ?? 0))
        })
    }
}

/// How an adapter is written.
public struct AdapterWriteOptions: Sendable {
    /// Storage dtype of the factors; nil keeps each format's default (f32 for PEFT).
    public var dtype: DType?
    public var overwrite: Bool
    /// Every input path, so an output can never replace or sit inside one.
    public var inputs: [String]
    /// The base model (its config.json gives GGUF the architecture and head counts).
    public var base: TensorStore?

    public init(dtype: DType? = nil, overwrite: Bool = false, inputs: [String] = [], base: TensorStore? = nil) {
        self.dtype = dtype
        self.overwrite = overwrite
        self.inputs = inputs
        self.base = base
    }
}

/// One adapter file format: recognise a path, open it into the neutral `Adapter`, and
/// (where the format can be written) write one. A new format is one type conforming to
/// this, plus its line in `AdapterRegistry.formats`.
public protocol AdapterFormat: Sendable {
    static var id: AdapterFormatID { get }
    /// A noun phrase for messages: "a PEFT adapter directory (adapter_config.json + ...)".
    static var expected: String { get }
    /// Whether `path` is this format. Cheap (file names, a config's type field, a file's
    /// first bytes) and never throws; a damaged file of the format still says yes, so that
    /// `open` can say what is wrong with it.
    static func probe(_ path: String) -> Bool
    static func open(_ path: String, options: AdapterOpenOptions) throws -> Adapter
    /// What `inspect` shows; the default opens the adapter and lists its modules.
    static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary
    /// Whether `write` is implemented.
    static var canWrite: Bool { get }
    /// Refuses an output this format may not write (exists without --overwrite, is or holds
    /// an input); called before any input is read. The default: a directory output.
    static func checkOutput(_ path: String, policy: OutputPolicy) throws
    /// Writes `adapter` in this format at `path`; returns the names of the files written.
    static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String]
}

extension AdapterFormat {
    public static func summarize(_ path: String, options: AdapterOpenOptions) throws -> AdapterSummary {
        AdapterSummary.of(try open(path, options: options), kind: "\(id.rawValue)-adapter", weightsFile: nil)
    }

    public static var canWrite: Bool { false }

    public static func checkOutput(_ path: String, policy: OutputPolicy) throws {
        try OutputGuard.check(path, kind: .directory, policy: policy)
    }

    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws -> [String] {
        throw AdapterError.unsupported(path: path, reason: "writing \(id.rawValue) adapters is not supported")
    }
}
