import OpConvertCore

/// A tensor's values wherever they live: a view into a mapped file, or computed in memory
/// (an OP checkpoint materialized on the fly).
public enum TensorData: Sendable {
    case stored(TensorStore, TensorStore.Entry)
    case memory(values: [Float], shape: [Int])
    /// Values made in f64 when read and not kept (LyCORIS reconstructions): an adapter holds
    /// only its factors, and a merge makes one module's delta at a time.
    case computed(ComputedTensor)

    public var shape: [Int] {
        switch self {
        case let .stored(_, e): return e.info.shape
        case let .memory(_, shape): return shape
        case let .computed(c): return c.shape
        }
    }

    public var dtype: DType {
        switch self {
        case let .stored(_, e): return e.info.dtype
        case .memory: return .f32
        case .computed: return .f64
        }
    }

    public var elementCount: Int { OpConvertCore.elementCount(shape) ?? 0 }

    /// Where the values came from, for error messages.
    public var origin: String {
        switch self {
        case let .stored(s, e): return "\(FileSystem.split(s.fileName(e)).name):\(e.info.name)"
        case .memory, .computed: return "(computed)"
        }
    }

    /// The values decoded to f32 (computed values rounded once, to nearest even).
    public func floats() throws -> [Float] {
        switch self {
        case let .memory(values, _): return values
        case let .computed(c): return try c.values().map { Float($0) }
        case let .stored(store, e):
            guard e.info.dtype.isDecodableFloat else {
                throw PipelineError.unsupported("\(origin): dtype \(e.info.dtype.rawValue) is not a float type")
            }
            let n = e.info.elementCount
            let src = store.data(e)
            return [Float](unsafeUninitializedCapacity: n) { buf, count in
                if n > 0 { DTypeConversion.decode(src.baseAddress!, e.info.dtype, to: buf.baseAddress!, count: n) }
                count = n
            }
        }
    }
}

extension TensorData {
    /// The values in f64: exact for stored and in-memory floats, as made for computed ones.
    public func doubles() throws -> [Double] {
        switch self {
        case let .computed(c): return try c.values()
        case let .stored(store, e) where e.info.dtype == .f64:
            let raw = store.data(e)
            return (0..<e.info.elementCount).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) }
        default: return try floats().map(Double.init)
        }
    }
}

/// A tensor whose values are computed on demand, each time they are read.
public struct ComputedTensor: Sendable {
    public let shape: [Int]
    private let make: @Sendable () throws -> [Double]

    public init(shape: [Int], make: @escaping @Sendable () throws -> [Double]) {
        self.shape = shape
        self.make = make
    }

    /// Computes the values (row-major, `shape`'s element count of them).
    public func values() throws -> [Double] {
        let v = try make()
        precondition(v.count == (OpConvertCore.elementCount(shape) ?? 0), "computed tensor: \(v.count) values for shape \(shape)")
        return v
    }
}
