import OpConvertCore

/// A tensor's values wherever they live: a view into a mapped file, or computed in memory
/// (an OP checkpoint materialized on the fly).
public enum TensorData: Sendable {
    case stored(TensorStore, TensorStore.Entry)
    case memory(values: [Float], shape: [Int])

    public var shape: [Int] {
        switch self {
        case let .stored(_, e): return e.info.shape
        case let .memory(_, shape): return shape
        }
    }

    public var dtype: DType {
        switch self {
        case let .stored(_, e): return e.info.dtype
        case .memory: return .f32
        }
    }

    public var elementCount: Int { OpConvertCore.elementCount(shape) ?? 0 }

    /// Where the values came from, for error messages.
    public var origin: String {
        switch self {
        case let .stored(s, e): return "\(FileSystem.split(s.fileName(e)).name):\(e.info.name)"
        case .memory: return "(computed)"
        }
    }

    /// The values decoded to f32.
    public func floats() throws -> [Float] {
        switch self {
        case let .memory(values, _): return values
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
