import COpConvertKernels
import Foundation
import XCTest

/// Bit-exact checks of the C dtype kernels (COpConvertKernels) against the reference
/// fixtures in fixtures/dtypes (made by fixtures/scripts/make_dtype_fixtures.py; its
/// README.md explains each file and the one NaN exception).
///
/// Every check runs on the SIMD path and on the forced scalar path, one after the other
/// inside a single test method, with source and destination misaligned, on the whole
/// fixture and on short odd-length slices (the SIMD loops' tails), and checks that
/// nothing is written outside the destination.
final class DTypeKernelTests: XCTestCase {

    func testSimdLevelAndForceScalar() {
        defer { opc_force_scalar(0) }
        let level = opc_simd_level()
        XCTAssertTrue((0...2).contains(level), "opc_simd_level() = \(level)")
        opc_force_scalar(1)
        XCTAssertEqual(opc_simd_level(), 0)
        opc_force_scalar(0)
        XCTAssertEqual(opc_simd_level(), level)
    }

    func testF16AndBF16ToF32() throws {
        let patterns = (0..<65536).map { UInt16($0) }
        let f16 = try loadDTypeFixture("f16_to_f32.bin", as: UInt32.self)
        let bf16 = try loadDTypeFixture("bf16_to_f32.bin", as: UInt32.self)
        XCTAssertEqual(f16.count, 65536)
        XCTAssertEqual(bf16.count, 65536)
        onBothKernelPaths { path in
            checkKernel("f16_to_f32 [\(path)]", patterns, f16, kernel: { s, d, n in
                opc_f16_to_f32(s, d.assumingMemoryBound(to: Float.self), n)
            })
            checkKernel("bf16_to_f32 [\(path)]", patterns, bf16, kernel: { s, d, n in
                opc_bf16_to_f32(s, d.assumingMemoryBound(to: Float.self), n)
            })
        }
    }

    func testFloat8ToF32() throws {
        // All 256 byte values, permuted and repeated so long inputs are covered too.
        let bytes = (0..<(256 * 41)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 / 256) }
        let e4m3 = try loadDTypeFixture("f8e4m3_to_f32.bin", as: UInt32.self)
        let e5m2 = try loadDTypeFixture("f8e5m2_to_f32.bin", as: UInt32.self)
        XCTAssertEqual(e4m3.count, 256)
        XCTAssertEqual(e5m2.count, 256)
        guard e4m3.count == 256, e5m2.count == 256 else { return }
        let expectE4M3 = bytes.map { e4m3[Int($0)] }
        let expectE5M2 = bytes.map { e5m2[Int($0)] }
        onBothKernelPaths { path in
            checkKernel("f8e4m3_to_f32 [\(path)]", bytes, expectE4M3, kernel: { s, d, n in
                opc_f8e4m3_to_f32(s, d.assumingMemoryBound(to: Float.self), n)
            })
            checkKernel("f8e5m2_to_f32 [\(path)]", bytes, expectE5M2, kernel: { s, d, n in
                opc_f8e5m2_to_f32(s, d.assumingMemoryBound(to: Float.self), n)
            })
        }
    }

    func testF16BF16Direct() throws {
        let patterns = (0..<65536).map { UInt16($0) }
        let toBF16 = try loadDTypeFixture("f16_to_bf16.bin", as: UInt16.self)
        let toF16 = try loadDTypeFixture("bf16_to_f16.bin", as: UInt16.self)
        onBothKernelPaths { path in
            checkKernel("f16_to_bf16 [\(path)]", patterns, toBF16, kernel: { s, d, n in
                opc_f16_to_bf16(s, d, n)
            })
            checkKernel("bf16_to_f16 [\(path)]", patterns, toF16, kernel: { s, d, n in
                opc_bf16_to_f16(s, d, n)
            })
        }
    }

    func testNarrowingFromF32() throws {
        let inputs = try loadDTypeFixture("f32_inputs.bin", as: UInt32.self)
        let toF16 = try loadDTypeFixture("f32_to_f16.bin", as: UInt16.self)
        let toBF16 = try loadDTypeFixture("f32_to_bf16.bin", as: UInt16.self)
        XCTAssertEqual(toF16.count, inputs.count)
        XCTAssertEqual(toBF16.count, inputs.count)
        onBothKernelPaths { path in
            checkKernel("f32_to_f16 [\(path)]", inputs, toF16, accept: acceptQuietedF16FromF32, kernel: { s, d, n in
                opc_f32_to_f16(s.assumingMemoryBound(to: Float.self), d, n)
            })
            checkKernel("f32_to_bf16 [\(path)]", inputs, toBF16, kernel: { s, d, n in
                opc_f32_to_bf16(s.assumingMemoryBound(to: Float.self), d, n)
            })
        }
    }

    func testF32ToF64AndCopies() throws {
        let inputs = try loadDTypeFixture("f32_inputs.bin", as: UInt32.self)
        // f32_to_f64.bin covers only the first 16384 inputs (README.md).
        let toF64 = try loadDTypeFixture("f32_to_f64.bin", as: UInt64.self)
        XCTAssertEqual(toF64.count, 16384)
        XCTAssertGreaterThanOrEqual(inputs.count, toF64.count)
        onBothKernelPaths { path in
            checkKernel("f32_to_f64 [\(path)]", inputs, toF64, kernel: { s, d, n in
                opc_f32_to_f64(s.assumingMemoryBound(to: Float.self), d, n)
            })
            checkKernel("f32_copy [\(path)]", inputs, inputs, kernel: { s, d, n in
                opc_f32_copy(s, d.assumingMemoryBound(to: Float.self), n)
            })
            checkKernel("f32_store [\(path)]", inputs, inputs, kernel: { s, d, n in
                opc_f32_store(s.assumingMemoryBound(to: Float.self), d, n)
            })
        }
    }

    func testNarrowingFromF64() throws {
        let inputs = try loadDTypeFixture("f64_inputs.bin", as: UInt64.self)
        let toF16 = try loadDTypeFixture("f64_to_f16.bin", as: UInt16.self)
        let toBF16 = try loadDTypeFixture("f64_to_bf16.bin", as: UInt16.self)
        let toF32 = try loadDTypeFixture("f64_to_f32.bin", as: UInt32.self)
        XCTAssertEqual(toF16.count, inputs.count)
        XCTAssertEqual(toBF16.count, inputs.count)
        XCTAssertEqual(toF32.count, inputs.count)
        onBothKernelPaths { path in
            checkKernel("f64_to_f16 [\(path)]", inputs, toF16, accept: acceptQuietedF16FromF64, kernel: { s, d, n in
                opc_f64_to_f16(s, d, n)
            })
            checkKernel("f64_to_bf16 [\(path)]", inputs, toBF16, kernel: { s, d, n in
                opc_f64_to_bf16(s, d, n)
            })
            checkKernel("f64_to_f32 [\(path)]", inputs, toF32, kernel: { s, d, n in
                opc_f64_to_f32(s, d.assumingMemoryBound(to: Float.self), n)
            })
        }
    }
}

// MARK: - Helpers

/// A kernel call on (source, destination, element count). Both pointers may be misaligned.
private typealias DTypeKernel = (UnsafeMutableRawPointer, UnsafeMutableRawPointer, Int) -> Void

private enum DTypeFixtureError: Error {
    case badSize(String, Int)
}

/// fixtures/dtypes, found from this file: Tests/OpConvertKitTests/ -> repository root.
private let dtypeFixturesDirectory: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent()
    .deletingLastPathComponent()
    .deletingLastPathComponent()
    .appendingPathComponent("fixtures")
    .appendingPathComponent("dtypes")

/// Reads a little-endian raw array from fixtures/dtypes.
private func loadDTypeFixture<T: FixedWidthInteger>(_ name: String, as type: T.Type) throws -> [T] {
    let data = try Data(contentsOf: dtypeFixturesDirectory.appendingPathComponent(name))
    let size = MemoryLayout<T>.size
    guard data.count % size == 0 else { throw DTypeFixtureError.badSize(name, data.count) }
    var values = [T](repeating: 0, count: data.count / size)
    values.withUnsafeMutableBytes { (dst: UnsafeMutableRawBufferPointer) in
        data.withUnsafeBytes { (src: UnsafeRawBufferPointer) in
            dst.copyMemory(from: src)
        }
    }
    return values.map { T(littleEndian: $0) }
}

/// Runs `body` on the SIMD path (whatever the CPU offers), then on the forced scalar
/// path, and always leaves the dispatcher unforced.
private func onBothKernelPaths(_ body: (String) -> Void) {
    defer { opc_force_scalar(0) }
    opc_force_scalar(0)
    body("simd level \(opc_simd_level())")
    opc_force_scalar(1)
    body("scalar")
}

/// numpy does not quiet a signalling NaN when narrowing to f16; opconvert does
/// (0x7E00 | sign | top payload bits, as F16C). Accept exactly that, only there.
private func acceptQuietedF16FromF32(_ x: UInt32, _ got: UInt16, _ want: UInt16) -> Bool {
    let magnitude: UInt32 = x & 0x7FFF_FFFF
    let isSignallingNaN: Bool = magnitude > 0x7F80_0000 && (x & 0x0040_0000) == 0
    let signBit: UInt32 = (x >> 16) & 0x8000
    let payload: UInt32 = (x >> 13) & 0x03FF
    let quieted = UInt16(truncatingIfNeeded: signBit | 0x7E00 | payload)
    return isSignallingNaN && got == quieted && isF16NaN(want) && (want & 0x8000) == (got & 0x8000)
}

private func acceptQuietedF16FromF64(_ x: UInt64, _ got: UInt16, _ want: UInt16) -> Bool {
    let magnitude: UInt64 = x & 0x7FFF_FFFF_FFFF_FFFF
    let isSignallingNaN: Bool = magnitude > 0x7FF0_0000_0000_0000 && (x & 0x0008_0000_0000_0000) == 0
    let signBit: UInt64 = (x >> 48) & 0x8000
    let payload: UInt64 = (x >> 42) & 0x03FF
    let quieted = UInt16(truncatingIfNeeded: signBit | 0x7E00 | payload)
    return isSignallingNaN && got == quieted && isF16NaN(want) && (want & 0x8000) == (got & 0x8000)
}

private func isF16NaN(_ h: UInt16) -> Bool {
    (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0
}

/// Checks `kernel` against `expected` (which may be shorter than `input`: only the first
/// expected.count inputs are used): whole array at several misalignments, then short
/// slices of many odd lengths. `accept(input, got, expected)` may accept a difference.
private func checkKernel<In: FixedWidthInteger, Out: FixedWidthInteger>(
    _ what: String, _ input: [In], _ expected: [Out],
    accept: ((In, Out, Out) -> Bool)? = nil,
    file: StaticString = #filePath, line: UInt = #line,
    kernel: DTypeKernel
) {
    let n = expected.count
    guard input.count >= n else {
        XCTFail("\(what): \(input.count) inputs for \(n) expected values", file: file, line: line)
        return
    }
    for (srcOffset, dstOffset) in [(0, 0), (1, 3), (2, 7), (3, 2)] {
        let ok = runAndCompare(what + " offsets \(srcOffset)/\(dstOffset)", input[0..<n], expected[0..<n],
                               srcOffset: srcOffset, dstOffset: dstOffset, accept: accept,
                               file: file, line: line, kernel: kernel)
        if !ok { return }
    }
    var start = 0
    let lengths = [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 47, 63, 64, 65, 100, 255, 256, 257, 1001]
    for length in lengths where length <= n {
        for repeatIndex in 0..<3 {
            start = (start &* 7919 &+ 104_729 &+ length &+ repeatIndex) % (n - length + 1)
            let ok = runAndCompare(what + " slice \(start)..<\(start + length)",
                                   input[start..<(start + length)], expected[start..<(start + length)],
                                   srcOffset: (length + repeatIndex) % 8, dstOffset: (length * 3 + repeatIndex) % 8,
                                   accept: accept, file: file, line: line, kernel: kernel)
            if !ok { return }
        }
    }
}

/// Copies `input` to a buffer at byte offset `srcOffset`, runs the kernel into a buffer at
/// `dstOffset` surrounded by guard bytes, and compares. Returns false after an XCTFail.
private func runAndCompare<In: FixedWidthInteger, Out: FixedWidthInteger>(
    _ what: String, _ input: ArraySlice<In>, _ expected: ArraySlice<Out>,
    srcOffset: Int, dstOffset: Int, accept: ((In, Out, Out) -> Bool)?,
    file: StaticString, line: UInt, kernel: DTypeKernel
) -> Bool {
    let n = input.count
    let inBytes = n * MemoryLayout<In>.size
    let outBytes = n * MemoryLayout<Out>.size
    let guardBytes = 16
    let src = UnsafeMutableRawPointer.allocate(byteCount: inBytes + 16, alignment: 64)
    let dst = UnsafeMutableRawPointer.allocate(byteCount: dstOffset + outBytes + guardBytes, alignment: 64)
    defer {
        src.deallocate()
        dst.deallocate()
    }
    if inBytes > 0 {
        input.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            (src + srcOffset).copyMemory(from: bytes.baseAddress!, byteCount: inBytes)
        }
    }
    dst.initializeMemory(as: UInt8.self, repeating: 0xA5, count: dstOffset + outBytes + guardBytes)

    kernel(src + srcOffset, dst + dstOffset, n)

    var intact = true
    for k in 0..<dstOffset where dst.load(fromByteOffset: k, as: UInt8.self) != 0xA5 { intact = false }
    for k in 0..<guardBytes where dst.load(fromByteOffset: dstOffset + outBytes + k, as: UInt8.self) != 0xA5 {
        intact = false
    }
    if !intact {
        XCTFail("\(what): wrote outside the destination", file: file, line: line)
        return false
    }

    var got = [Out](repeating: 0, count: n)
    if outBytes > 0 {
        got.withUnsafeMutableBytes { (bytes: UnsafeMutableRawBufferPointer) in
            bytes.baseAddress!.copyMemory(from: dst + dstOffset, byteCount: outBytes)
        }
    }
    let identical = got.withUnsafeBytes { (a: UnsafeRawBufferPointer) in
        expected.withUnsafeBytes { (b: UnsafeRawBufferPointer) in
            a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
        }
    }
    if identical { return true }
    var mismatches = 0
    var examples: [String] = []
    for (i, (x, want)) in zip(input, expected).enumerated() {
        let value = got[i]
        if value == want { continue }
        if let accept, accept(x, value, want) { continue }
        mismatches += 1
        if examples.count < 5 {
            examples.append("#\(i) input 0x\(String(x, radix: 16)): expected 0x\(String(want, radix: 16)) got 0x\(String(value, radix: 16))")
        }
    }
    if mismatches > 0 {
        XCTFail("\(what): \(mismatches) of \(n) differ: \(examples.joined(separator: "; "))", file: file, line: line)
        return false
    }
    return true
}
