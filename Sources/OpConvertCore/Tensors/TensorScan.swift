import COpConvertKernels
import Foundation

/// Reads a tensor's bytes in parallel pieces: NaN/Inf count for floats, a byte fold for
/// everything else (so every page is really read).
public enum TensorScan {
    /// NaN/Inf elements of a float tensor; nil for other dtypes (still read in full).
    public static func nonFinite(_ data: UnsafeRawBufferPointer, _ dtype: DType, count: Int) -> Int? {
        guard let base = data.baseAddress, count > 0 else { return dtype.isCastableFloat ? 0 : nil }
        let counter: ((UnsafeRawPointer, Int) -> Int)?
        switch dtype {
        case .f16: counter = { opc_count_nonfinite_f16($0, $1) }
        case .bf16: counter = { opc_count_nonfinite_bf16($0, $1) }
        case .f32: counter = { opc_count_nonfinite_f32($0, $1) }
        case .f64: counter = { opc_count_nonfinite_f64($0, $1) }
        default: counter = nil
        }
        if let counter, let width = dtype.byteWidth {
            let partial = PartialCounts()
            DTypeConversion.parallel(count) { start, n in
                partial.add(counter(base + start * width, n))
            }
            return partial.total
        }
        DTypeConversion.parallel(data.count) { start, n in
            _ = opc_fold_bytes(base + start, n)
        }
        return nil
    }
}

/// Sums counts from concurrent pieces.
// @unchecked: `value` is only touched under `lock`.
final class PartialCounts: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func add(_ n: Int) { lock.withLock { value += n } }
    var total: Int { lock.withLock { value } }
}

