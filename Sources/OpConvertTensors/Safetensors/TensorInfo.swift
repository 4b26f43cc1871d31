import OpConvertCore

/// One tensor's header entry: what it is and where its bytes are.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Byte range relative to the start of the data buffer, as in the header.
    public var dataOffsets: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    public var byteCount: Int { dataOffsets.count }
    public var elementCount: Int { OpConvertCore.elementCount(shape) ?? 0 }
}

/// A tensor's name, type and shape, without a location: what a writer is asked to store.
public struct TensorSpec: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var elementCount: Int { OpConvertCore.elementCount(shape) ?? 0 }
    public var byteCount: Int { dtype.byteCount(elements: elementCount) ?? 0 }
}
