import COpConvertKernels
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Element conversions between the float dtypes, on the SIMD kernels in COpConvertKernels.
/// Every narrowing rounds once, to nearest even. Sources may be unaligned.
public enum DTypeConversion {
    /// Below this many elements a conversion runs on the calling thread.
    static let parallelThreshold = 1 << 18

    /// Decodes `count` elements of `dtype` to f32. `dtype.isDecodableFloat` must hold.
    public static func decode(_ src: UnsafeRawPointer, _ dtype: DType, to dst: UnsafeMutablePointer<Float>, count: Int) {
        parallel(count) { start, n in
            let s = src + start * dtype.byteWidth!
            let d = dst + start
            switch dtype {
            case .f32: opc_f32_copy(s, d, n)
            case .f16: opc_f16_to_f32(s, d, n)
            case .bf16: opc_bf16_to_f32(s, d, n)
            case .f64: opc_f64_to_f32(s, d, n)
            case .f8E4M3: opc_f8e4m3_to_f32(s, d, n)
            case .f8E5M2: opc_f8e5m2_to_f32(s, d, n)
            default: preconditionFailure("decode from \(dtype) is not supported")
            }
        }
    }

    /// Rounds `count` f32 values into `dtype` (f32, f16, bf16 or f64).
    public static func encode(_ src: UnsafePointer<Float>, to dst: UnsafeMutableRawPointer, _ dtype: DType, count: Int) {
        parallel(count) { start, n in
            let s = src + start
            let d = dst + start * dtype.byteWidth!
            switch dtype {
            case .f32: opc_f32_store(s, d, n)
            case .f16: opc_f32_to_f16(s, d, n)
            case .bf16: opc_f32_to_bf16(s, d, n)
            case .f64: opc_f32_to_f64(s, d, n)
            default: preconditionFailure("encode to \(dtype) is not supported")
            }
        }
    }

    /// Decodes `count` elements of `dtype` to f64 (exact: every float dtype widens exactly),
    /// on the calling thread; `staging` holds `count` f32 values for the narrow dtypes.
    package static func decode(_ src: UnsafeRawPointer, _ dtype: DType, to dst: UnsafeMutablePointer<Double>, count: Int,
                               staging: UnsafeMutablePointer<Float>) {
        guard count > 0 else { return }
        if dtype == .f64 {
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 8)
            return
        }
        if dtype == .f32 {
            opc_f32_to_f64(src.assumingMemoryBound(to: Float.self), dst, count)
            return
        }
        switch dtype {
        case .f16: opc_f16_to_f32(src, staging, count)
        case .bf16: opc_bf16_to_f32(src, staging, count)
        case .f8E4M3: opc_f8e4m3_to_f32(src, staging, count)
        case .f8E5M2: opc_f8e5m2_to_f32(src, staging, count)
        default: preconditionFailure("decode from \(dtype) is not supported")
        }
        opc_f32_to_f64(staging, dst, count)
    }

    /// Rounds `count` f64 values into `dtype` (f32, f16, bf16 or f64) once, to nearest even,
    /// on the calling thread (f16/bf16 go through f32 rounded to odd, which is the same).
    package static func encode(_ src: UnsafePointer<Double>, to dst: UnsafeMutableRawPointer, _ dtype: DType, count: Int) {
        guard count > 0 else { return }
        switch dtype {
        case .f32: opc_f64_to_f32(src, dst.assumingMemoryBound(to: Float.self), count)
        case .f16: opc_f64_to_f16(src, dst, count)
        case .bf16: opc_f64_to_bf16(src, dst, count)
        case .f64: dst.copyMemory(from: src, byteCount: count * 8)
        default: preconditionFailure("encode to \(dtype) is not supported")
        }
    }

    /// Converts between castable floats with a single rounding (f64 narrows directly,
    /// never through f32). Same dtype is a copy.
    public static func convert(_ src: UnsafeRawPointer, _ from: DType, to dst: UnsafeMutableRawPointer, _ to: DType, count: Int) {
        if from == to {
            dst.copyMemory(from: src, byteCount: count * from.byteWidth!)
            return
        }
        switch (from, to) {
        case (.f64, .f16): parallel(count) { s, n in opc_f64_to_f16(src + 8 * s, dst + 2 * s, n) }
        case (.f64, .bf16): parallel(count) { s, n in opc_f64_to_bf16(src + 8 * s, dst + 2 * s, n) }
        case (.f16, .bf16): parallel(count) { s, n in opc_f16_to_bf16(src + 2 * s, dst + 2 * s, n) }
        case (.bf16, .f16): parallel(count) { s, n in opc_bf16_to_f16(src + 2 * s, dst + 2 * s, n) }
        case (.f32, _):
            encode(src.assumingMemoryBound(to: Float.self), to: dst, to, count: count)
        case (_, .f32):
            decode(src, from, to: dst.assumingMemoryBound(to: Float.self), count: count)
        default:
            // Widening into f64 from f16/bf16/f8: exact through f32.
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
            defer { tmp.deallocate() }
            decode(src, from, to: tmp, count: count)
            encode(tmp, to: dst, to, count: count)
        }
    }

    /// Splits [0, count) into contiguous pieces, one per core, each at least `minPiece`
    /// long and a multiple of `align` (so SIMD loops keep full vectors); small inputs run on
    /// the calling thread. The pieces are disjoint, so `body` may write its own range.
    package static func parallel(_ count: Int, minPiece: Int = parallelThreshold / 2, align: Int = 64, _ body: (Int, Int) -> Void) {
        let workers = min(ProcessInfoCache.activeCores, count / max(minPiece, 1))
        if workers < 2 {
            body(0, count)
            return
        }
        let per = ((count + workers - 1) / workers + align - 1) / align * align
        let pieces = (count + per - 1) / per
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: pieces) { k in
                let start = k * per
                shared.value(start, min(per, count - start))
            }
        }
    }

    /// The SIMD level picked at run time: "scalar", "avx2+f16c" or "avx512".
    public static var simdLevel: String {
        switch opc_simd_level() {
        case 2: return "avx512"
        case 1: return "avx2+f16c"
        default: return "scalar"
        }
    }
}

enum ProcessInfoCache {
    static let activeCores: Int = {
        #if canImport(Glibc)
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
        return 1
        #endif
    }()
}

/// Hands a value to concurrent workers that only touch disjoint parts of it.
/// @unchecked: that is its purpose; callers guarantee the parts touched are disjoint.
package struct UncheckedSendable<T>: @unchecked Sendable {
    package let value: T
    package init(_ value: T) { self.value = value }
}
