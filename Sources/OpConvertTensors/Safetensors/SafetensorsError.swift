import OpConvertCore

/// Everything that can be wrong with a safetensors file or a sharded index. Each case names
/// the file and, where there is one, the tensor.
public enum SafetensorsError: CategorizedError, Sendable {
    case io(IOError)
    case fileTooSmall(file: String, size: Int)
    case headerTooLarge(file: String, length: UInt64)
    case headerPastEndOfFile(file: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(file: String)
    case invalidJSON(file: String, reason: String)
    case invalidHeader(file: String, reason: String)
    case invalidTensorEntry(file: String, tensor: String, reason: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case invalidOffsets(file: String, tensor: String, reason: String)
    case shapeOverflow(file: String, tensor: String)
    case sizeMismatch(file: String, tensor: String, expected: Int, actual: Int)
    case bufferSizeMismatch(file: String, expected: Int, actual: Int)
    case tensorNotFound(file: String, tensor: String)
    case invalidIndex(file: String, reason: String)
    case duplicateTensor(tensor: String, files: [String])

    public var description: String {
        switch self {
        case let .io(e): return e.description
        case let .fileTooSmall(f, size):
            return "\(f): not a safetensors file: \(size) bytes, too small for the 8-byte header length"
        case let .headerTooLarge(f, n):
            return "\(f): header length \(n) exceeds the limit of 100000000 bytes"
        case let .headerPastEndOfFile(f, n, size):
            return "\(f): header length \(n) runs past the end of the file (\(size) bytes)"
        case let .headerNotUTF8(f):
            return "\(f): header is not valid UTF-8"
        case let .invalidJSON(f, r):
            return "\(f): header is not valid JSON: \(r)"
        case let .invalidHeader(f, r):
            return "\(f): invalid header: \(r)"
        case let .invalidTensorEntry(f, t, r):
            return "\(f): tensor \"\(t)\": \(r)"
        case let .unknownDType(f, t, d):
            return "\(f): tensor \"\(t)\": unknown dtype \"\(d)\" (expected one of \(DType.allCases.map(\.rawValue).joined(separator: ", ")))"
        case let .invalidOffsets(f, t, r):
            return "\(f): tensor \"\(t)\": invalid data_offsets: \(r)"
        case let .shapeOverflow(f, t):
            return "\(f): tensor \"\(t)\": shape is too large (element or byte count overflows)"
        case let .sizeMismatch(f, t, e, a):
            return "\(f): tensor \"\(t)\": data_offsets span \(a) bytes but dtype and shape need \(e)"
        case let .bufferSizeMismatch(f, e, a):
            return "\(f): data buffer is \(a) bytes but the tensors cover \(e) (file truncated or has trailing bytes)"
        case let .tensorNotFound(f, t):
            return "\(f): no tensor named \"\(t)\""
        case let .invalidIndex(f, r):
            return "\(f): invalid index: \(r)"
        case let .duplicateTensor(t, files):
            return "tensor \"\(t)\" appears in more than one file: \(files.joined(separator: ", "))"
        }
    }
}

extension SafetensorsError {
    public var category: ErrorCategory {
        if case let .io(io) = self { return io.category }
        return .malformedInput
    }
}
