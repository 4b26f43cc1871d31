/// Every element type of the safetensors format (0.8), in the reference's enum order.
///
/// One enum holds the names, sizes and ordering rules, so that no other file needs to
/// switch over dtype strings.
public enum DType: String, CaseIterable, Sendable, Hashable, Codable {
    case bool = "BOOL"
    case f4 = "F4"
    case f6E2M3 = "F6_E2M3"
    case f6E3M2 = "F6_E3M2"
    case u8 = "U8"
    case i8 = "I8"
    case f8E5M2 = "F8_E5M2"
    case f8E4M3 = "F8_E4M3"
    case f8E8M0 = "F8_E8M0"
    case f8E4M3FNUZ = "F8_E4M3FNUZ"
    case f8E5M2FNUZ = "F8_E5M2FNUZ"
    case i16 = "I16"
    case u16 = "U16"
    case f16 = "F16"
    case bf16 = "BF16"
    case i32 = "I32"
    case u32 = "U32"
    case f32 = "F32"
    case c64 = "C64"
    case f64 = "F64"
    case i64 = "I64"
    case u64 = "U64"

    /// Storage size of one element in bits (F4 and F6 are sub-byte).
    public var bitWidth: Int {
        switch self {
        case .f4: return 4
        case .f6E2M3, .f6E3M2: return 6
        case .bool, .u8, .i8, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ: return 8
        case .i16, .u16, .f16, .bf16: return 16
        case .i32, .u32, .f32: return 32
        case .c64, .f64, .i64, .u64: return 64
        }
    }

    /// Size of one element in bytes; nil for sub-byte types.
    public var byteWidth: Int? { bitWidth % 8 == 0 ? bitWidth / 8 : nil }

    /// Position in the reference enum; the writer orders tensors by this, descending.
    public var rank: Int { DType.allCases.firstIndex(of: self)! }

    /// Types that `convert` and `merge` compute with in f32 and may cast between.
    public var isCastableFloat: Bool {
        switch self {
        case .f16, .bf16, .f32, .f64: return true
        default: return false
        }
    }

    /// Types opconvert can decode to f32 (cast targets plus the 8-bit floats).
    public var isDecodableFloat: Bool { isCastableFloat || self == .f8E4M3 || self == .f8E5M2 }

    /// What a `--dtype` cast makes of a tensor of this type: floats become `target`,
    /// everything else (and everything when there is no target) stays as stored.
    public func casting(to target: DType?) -> DType {
        guard let target, isCastableFloat else { return self }
        return target
    }

    /// The name PyTorch and transformers' config.json use.
    public var torchName: String? {
        switch self {
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        case .f32: return "float32"
        case .f64: return "float64"
        default: return nil
        }
    }

    /// Number of bytes for `elements` elements, or nil when the bit count is not a whole
    /// number of bytes or overflows.
    public func byteCount(elements: Int) -> Int? {
        let (bits, overflow) = elements.multipliedReportingOverflow(by: bitWidth)
        guard !overflow, bits % 8 == 0 else { return nil }
        return bits / 8
    }
}

/// The cast targets offered on the command line.
public enum FloatDType: String, CaseIterable, Sendable {
    case f32, bf16, f16, f64
    public var dtype: DType {
        switch self {
        case .f32: return .f32
        case .bf16: return .bf16
        case .f16: return .f16
        case .f64: return .f64
        }
    }
    public init?(lenient name: String) {
        switch name.lowercased() {
        case "f32", "float32", "fp32": self = .f32
        case "bf16", "bfloat16": self = .bf16
        case "f16", "float16", "fp16", "half": self = .f16
        case "f64", "float64", "fp64", "double": self = .f64
        default: return nil
        }
    }
}

/// Element count of a shape, or nil on overflow. The empty shape is a scalar (1 element).
public func elementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, o) = n.multipliedReportingOverflow(by: d)
        if o { return nil }
        n = p
    }
    return n
}
