import Foundation
import XCTest
@testable import OpConvertKit

/// The GGUF container: every value type, layout, and hostile bytes (truncations, bit flips,
/// absurd counts) that must give a GGUFError, never a trap.
final class GGUFFileTests: XCTestCase {
    func parse(_ bytes: [UInt8]) throws -> GGUFFile.Parsed {
        try bytes.withUnsafeBytes { try GGUFFile.parse($0, path: "test.gguf") }
    }

    /// A file written by the gguf package holding every metadata type and alignment 64.
    func testReadsEveryValueTypeWrittenByTheGGUFPackage() throws {
        let f = try GGUFFile(path: TestPaths.fixture("gguf/bad/all_types_unpaired.gguf"))
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.dataStart % 64, 0)
        XCTAssertEqual(f.value("t.u8"), .u8(200))
        XCTAssertEqual(f.value("t.i8"), .i8(-100))
        XCTAssertEqual(f.value("t.u16"), .u16(60000))
        XCTAssertEqual(f.value("t.i16"), .i16(-30000))
        XCTAssertEqual(f.value("t.u32"), .u32(4_000_000_000))
        XCTAssertEqual(f.value("t.i32"), .i32(-2_000_000_000))
        XCTAssertEqual(f.value("t.f32"), .f32(0.5))
        XCTAssertEqual(f.value("t.bool"), .bool(true))
        XCTAssertEqual(f.value("t.string"), .string("héllo"))
        XCTAssertEqual(f.value("t.u64"), .u64(1 << 63 + 1))
        XCTAssertEqual(f.value("t.i64"), .i64(-(1 << 62)))
        XCTAssertEqual(f.value("t.f64"), .f64(0.1))
        XCTAssertEqual(f.value("t.array")?.type, .array)
        XCTAssertEqual(f.value("t.strings"), .array(of: .string, [.string("a"), .string("bc")]))
        if case let .array(t, items)? = f.value("t.array") {
            XCTAssertEqual(items.compactMap(\.intValue), [1, 2, 3])
            XCTAssertTrue([.i32, .i64, .u8, .u32].contains(t))
        }
        let t = try XCTUnwrap(f.tensors.first)
        XCTAssertEqual(t.name, "blk.0.attn_v.weight.lora_a")
        XCTAssertEqual(t.dims, [64, 8])
        XCTAssertEqual(t.shape, [8, 64])
        let values = try f.floats(t)
        XCTAssertEqual(values.count, 512)
        XCTAssertEqual(values[3], 3.0 / 512)
    }

    /// Our writer's bytes read back to the same values, with every type, and the layout of the
    /// gguf package (data padded to the alignment, offsets relative to the data section).
    func testWriterRoundTripsEveryValueType() throws {
        let dir = TestPaths.scratch(self)
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string("llama")), ("a.u8", .u8(7)), ("a.i8", .i8(-7)), ("a.u16", .u16(65535)),
            ("a.i16", .i16(-1)), ("a.u32", .u32(1)), ("a.i32", .i32(-5)), ("a.f32", .f32(-0.25)), ("a.bool", .bool(false)),
            ("a.u64", .u64(.max)), ("a.i64", .i64(.min)), ("a.f64", .f64(.pi)),
            ("a.nested", .array(of: .array, [.array(of: .u32, [.u32(1), .u32(2)]), .array(of: .u32, [])])),
            ("a.empty", .string("")),
        ]
        let specs = [GGUFTensorSpec(name: "x", dims: [3, 2], type: .f32), GGUFTensorSpec(name: "y", dims: [5], type: .f16)]
        let payload: [[UInt8]] = [[Float](repeating: 1.5, count: 6).bytes, [UInt8](repeating: 0x3c, count: 10)]
        try GGUFWriter.write(to: dir + "/t.gguf", metadata: metadata, tensors: specs, policy: OutputPolicy()) { payload[$0] }
        let f = try GGUFFile(path: dir + "/t.gguf")
        XCTAssertEqual(f.metadata.map(\.key), metadata.map(\.key))
        for (a, b) in zip(f.metadata, metadata) { XCTAssertEqual(a.value, b.value, a.key) }
        XCTAssertEqual(f.tensors.map(\.offset), [0, 32])
        XCTAssertEqual(Array(f.data(f.tensors[1])), payload[1])
        XCTAssertEqual(try f.floats(f.tensors[0]), [Float](repeating: 1.5, count: 6))
        XCTAssertEqual(readBytes(dir + "/t.gguf").count, f.dataStart + 32 + 32)
        // A second write without overwrite is refused; a non-GGUF file is never replaced.
        XCTAssertThrowsError(try GGUFWriter.write(to: dir + "/t.gguf", metadata: [], tensors: [], policy: OutputPolicy()) { _ in [] })
        writeFile(dir + "/notes.gguf", Array("hello".utf8))
        XCTAssertThrowsError(try GGUFWriter.write(to: dir + "/notes.gguf", metadata: [], tensors: [], policy: OutputPolicy(overwrite: true)) { _ in [] }) {
            XCTAssertTrue("\($0)".contains("not a GGUF file"), "\($0)")
        }
        XCTAssertEqual(readBytes(dir + "/notes.gguf"), Array("hello".utf8))
        // A producer handing the wrong byte count: an internal error, and no file appears.
        XCTAssertThrowsError(try GGUFWriter.write(to: dir + "/short.gguf", metadata: [], tensors: specs, policy: OutputPolicy()) { _ in [1, 2] }) {
            XCTAssertEqual(($0 as? GGUFError)?.exitStatus, .failure, "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/short.gguf"))
    }

    /// Every prefix of a real file is refused with a one-line GGUFError (a file cut anywhere
    /// before its last tensor ends).
    func testEveryTruncationIsAnError() throws {
        let bytes = readBytes(TestPaths.fixture("gguf/reference/qwen2_lora_f32.gguf"))
        let full = try parse(bytes)
        let lastEnd = full.tensors.map { full.dataStart + $0.offset + $0.byteCount }.max()!
        var n = 0
        while n < lastEnd {
            XCTAssertThrowsError(try parse(Array(bytes.prefix(n))), "prefix \(n)") {
                XCTAssertTrue($0 is GGUFError, "prefix \(n): \($0)")
                XCTAssertFalse("\($0)".contains("\n"))
            }
            // Every byte of the header, then strides through the data.
            n += n < full.dataStart + 64 ? 1 : 97
        }
    }

    /// Flipped bits anywhere in the header either parse into something whose tensors lie in the
    /// file, or give a GGUFError; never a trap.
    func testBitFlipsNeverTrap() throws {
        let bytes = readBytes(TestPaths.fixture("gguf/reference/llama_gqa_lora_f32.gguf"))
        let header = try parse(bytes).dataStart
        var parsed = 0, refused = 0
        for i in 0..<header {
            for bit in [0, 3, 7] {
                var b = bytes
                b[i] ^= UInt8(1 << bit)
                do {
                    let p = try parse(b)
                    for t in p.tensors { XCTAssertLessThanOrEqual(p.dataStart + t.offset + t.byteCount, b.count) }
                    parsed += 1
                } catch is GGUFError {
                    refused += 1
                }
            }
        }
        XCTAssertGreaterThan(refused, 100)
        XCTAssertGreaterThan(parsed, 100)  // flips inside names and values are still valid files
        // Pseudo-random garbage after the magic (a fixed LCG, so every run tries the same bytes).
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt8 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        for _ in 0..<300 {
            let junk = Array("GGUF".utf8) + [3, 0, 0, 0] + (0..<Int(next())).map { _ in next() }
            do { _ = try parse(junk) } catch is GGUFError {}
        }
    }

    /// Hand-made hostile headers: each gets its own reason.
    func testHostileHeaders() throws {
        func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) -> [UInt8] {
            var out = Array("GGUF".utf8)
            GGUFWriter.append(version, to: &out)
            GGUFWriter.append(tensors, to: &out)
            GGUFWriter.append(kvs, to: &out)
            return out
        }
        func refused(_ bytes: [UInt8], _ phrase: String, _ status: ExitStatus = .dataError, line: UInt = #line) {
            XCTAssertThrowsError(try parse(bytes), line: line) {
                XCTAssertTrue("\($0)".contains(phrase), "\($0)", line: line)
                XCTAssertEqual(($0 as? GGUFError)?.exitStatus, status, line: line)
            }
        }
        refused(Array("GGUX".utf8) + [UInt8](repeating: 0, count: 20), "GGUF magic")
        refused(header(version: 1, tensors: 0, kvs: 0), "version 1", .unsupported)
        refused(header(version: 0x0300_0000, tensors: 0, kvs: 0), "big-endian", .unsupported)
        refused(header(version: 9, tensors: 0, kvs: 0), "version 9", .unsupported)
        refused(header(tensors: .max, kvs: 0), "tensor count")
        refused(header(tensors: 0, kvs: 1 << 40), "metadata count")
        var s = header(tensors: 0, kvs: 1)
        GGUFWriter.append(UInt64.max, to: &s)
        refused(s + [UInt8](repeating: 0, count: 13), "past the end")
        // An array claiming 2^60 u32 elements.
        var a = header(tensors: 0, kvs: 1)
        GGUFWriter.appendString("k", to: &a)
        GGUFWriter.append(GGUFValueType.array.rawValue, to: &a)
        GGUFWriter.append(GGUFValueType.u32.rawValue, to: &a)
        GGUFWriter.append(UInt64(1) << 60, to: &a)
        refused(a + [UInt8](repeating: 0, count: 16), "length of array k")
        // Arrays nested past the limit.
        var deep = header(tensors: 0, kvs: 1)
        GGUFWriter.appendString("d", to: &deep)
        GGUFWriter.append(GGUFValueType.array.rawValue, to: &deep)
        for _ in 0..<20 { GGUFWriter.append(GGUFValueType.array.rawValue, to: &deep); GGUFWriter.append(UInt64(1), to: &deep) }
        refused(deep + [UInt8](repeating: 0, count: 64), "nests arrays")
        // Unknown value type, bad bool, bad alignment, duplicate key, invalid UTF-8.
        refused(kv("k", type: 99, payload: []), "unknown value type 99")
        refused(kv("k", type: GGUFValueType.bool.rawValue, payload: [2]), "bool with value 2")
        refused(kv("general.alignment", type: GGUFValueType.u32.rawValue, payload: [24, 0, 0, 0]), "power of two")
        refused(kv("general.alignment", type: GGUFValueType.string.rawValue, payload: [1, 0, 0, 0, 0, 0, 0, 0, 65]), "expected u32")
        refused(kv("k", type: GGUFValueType.string.rawValue, payload: [2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]), "UTF-8")
        // Tensor infos: too many dims, unknown type, huge dims, misaligned or out-of-file offsets, overlap.
        refused(tensorFile([("t", [4, 1, 1, 1, 1], 0, 0)]), "5 dimensions")
        refused(tensorFile([("t", [4], 99, 0)]), "unknown ggml type 99")
        refused(tensorFile([("t", [1 << 40], 0, 0)]), "too large")
        refused(tensorFile([("t", [1 << 30, 1 << 30], 0, 0)]), "more elements")
        refused(tensorFile([("t", [4], 0, 8)]), "not a multiple of the alignment")
        refused(tensorFile([("t", [16], 0, 0)]), "extends past the end")
        refused(tensorFile([("t", [16], 0, 0), ("u", [16], 0, 32)], data: 128), "overlap")
        refused(tensorFile([("t", [16], 0, 0), ("t", [16], 0, 64)], data: 128), "appears twice")
        refused(tensorFile([("t", [33, 1], 8, 0)], data: 128), "block size")
        XCTAssertNoThrow(try parse(tensorFile([("t", [16], 0, 0), ("u", [16], 0, 64)], data: 128)))
    }

    func kv(_ key: String, type: UInt32, payload: [UInt8]) -> [UInt8] {
        var out = Array("GGUF".utf8)
        GGUFWriter.append(UInt32(3), to: &out)
        GGUFWriter.append(UInt64(0), to: &out)
        GGUFWriter.append(UInt64(1), to: &out)
        GGUFWriter.appendString(key, to: &out)
        GGUFWriter.append(type, to: &out)
        return out + payload + [UInt8](repeating: 0, count: 16)
    }

    func tensorFile(_ tensors: [(String, [UInt64], UInt32, UInt64)], data: Int = 0) -> [UInt8] {
        var out = Array("GGUF".utf8)
        GGUFWriter.append(UInt32(3), to: &out)
        GGUFWriter.append(UInt64(tensors.count), to: &out)
        GGUFWriter.append(UInt64(0), to: &out)
        for (name, dims, type, offset) in tensors {
            GGUFWriter.appendString(name, to: &out)
            GGUFWriter.append(UInt32(dims.count), to: &out)
            for d in dims { GGUFWriter.append(d, to: &out) }
            GGUFWriter.append(type, to: &out)
            GGUFWriter.append(offset, to: &out)
        }
        out += [UInt8](repeating: 0, count: GGUFWriter.padding(out.count, 32) + data)
        return out
    }

    func testProbe() throws {
        XCTAssertTrue(GGUFFormat.probe(TestPaths.fixture("gguf/reference/llama_lora_f32.gguf")))
        XCTAssertFalse(GGUFFormat.probe(TestPaths.fixture("peft/adapters/llama_lora")))
        XCTAssertFalse(GGUFFormat.probe(TestPaths.fixture("gguf/cases.json")))
        XCTAssertFalse(GGUFFormat.probe(TestPaths.fixture("gguf/missing.gguf")))
        XCTAssertTrue(AdapterRegistry.format(of: TestPaths.fixture("gguf/reference/llama_lora_f32.gguf")) == GGUFFormat.self)
    }
}
