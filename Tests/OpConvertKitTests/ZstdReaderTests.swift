import Foundation
import XCTest
@testable import OpConvertKit

/// Reading .safetensors.zst: the content must be exactly the file its header describes,
/// whatever the frame declares, and every zstd failure is malformed input naming the file.
final class ZstdReaderTests: XCTestCase {
    /// Compresses `pieces` as one zstd frame (with the library's own writer) into `path`.
    private func compress(_ path: String, _ pieces: [[UInt8]]) throws {
        let out = try ZstdOutputFile(path: path)
        for p in pieces { try p.withUnsafeBytes { try out.write($0) } }
        try out.commit(sync: false)
    }

    /// Compresses `zeros` zero bytes after `prefix`, in 1 MiB writes (small memory).
    private func compressZeros(_ path: String, after prefix: [UInt8], zeros: Int) throws {
        let out = try ZstdOutputFile(path: path)
        try prefix.withUnsafeBytes { try out.write($0) }
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        var left = zeros
        while left > 0 {
            let n = min(left, chunk.count)
            try chunk.withUnsafeBytes { try out.write(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            left -= n
        }
        try out.commit(sync: false)
    }

    private let header = #"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
    private let data: [UInt8] = [Float(1), 2, 3, 4].bytes

    /// Opens `path` expecting a malformed-input error (65) that names it and says `expected`.
    private func assertMalformed(_ path: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsFile.open(path), file: file, line: line) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError, "\(error)", file: file, line: line)
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix(path + ":"), text, file: file, line: line)
            XCTAssertTrue(text.contains(expected), text, file: file, line: line)
            XCTAssertFalse(text.contains("\n"), text, file: file, line: line)
        }
    }

    func testRoundTrip() throws {
        let path = TestPaths.scratch(self) + "/m.safetensors.zst"
        let raw = rawSafetensors(header: header, data: data)
        try compress(path, [raw])
        let f = try SafetensorsFile.open(path)
        XCTAssertEqual(f.tensors.map(\.name), ["t"])
        XCTAssertEqual(Array(f.data(try f.tensor(named: "t"))), data)
        XCTAssertEqual(Array(f.mapping.bytes), raw)
    }

    func testConcatenatedFramesReadAsOneStream() throws {
        let dir = TestPaths.scratch(self)
        let raw = rawSafetensors(header: header, data: data)
        try compress(dir + "/a.zst", [Array(raw[..<20])])
        try compress(dir + "/b.zst", [Array(raw[20...])])
        let path = dir + "/m.safetensors.zst"
        writeFile(path, readBytes(dir + "/a.zst") + readBytes(dir + "/b.zst"))
        let f = try SafetensorsFile.open(path)
        XCTAssertEqual(Array(f.mapping.bytes), raw)
    }

    func testWriterOutputIsReadBack() throws {
        let path = TestPaths.scratch(self) + "/w.safetensors.zst"
        let w = try SafetensorsWriter(path: path, tensors: [TensorSpec(name: "t", dtype: .f32, shape: [4])], metadata: ["k": "v"], compressed: true)
        try data.withUnsafeBytes { try w.write($0) }
        try w.finish(sync: false)
        let f = try SafetensorsFile.open(path)
        XCTAssertEqual(f.metadata, ["k": "v"])
        XCTAssertEqual(Array(f.data(try f.tensor(named: "t"))), data)
    }

    /// A frame of zeros only: the 8 zero bytes of "header length" give an empty header,
    /// refused before more than the header is decompressed.
    func testZeroBombIsRefusedAtTheHeader() throws {
        let path = TestPaths.scratch(self) + "/bomb.safetensors.zst"
        try compressZeros(path, after: [], zeros: 64 << 20)
        XCTAssertLessThan(readBytes(path).count, 64 << 10)
        assertMalformed(path, "header is not valid JSON")
    }

    func testContentLargerThanHeaderSaysIsRefused() throws {
        let path = TestPaths.scratch(self) + "/big.safetensors.zst"
        try compressZeros(path, after: rawSafetensors(header: header, data: data), zeros: 64 << 20)
        assertMalformed(path, "larger than the \(rawSafetensors(header: header).count + 16) bytes its safetensors header describes")
    }

    func testContentShorterThanHeaderSaysIsRefused() throws {
        let path = TestPaths.scratch(self) + "/short.safetensors.zst"
        try compress(path, [rawSafetensors(header: header, data: Array(data[..<10]))])
        assertMalformed(path, "content ends after \(rawSafetensors(header: header).count + 10) bytes")
    }

    func testContentEndingInsideTheHeaderIsRefused() throws {
        let dir = TestPaths.scratch(self)
        try compress(dir + "/a.zst", [Array(rawSafetensors(header: header)[..<20])])
        assertMalformed(dir + "/a.zst", "runs past the end of the file")
        try compress(dir + "/b.zst", [[1, 2, 3]])
        assertMalformed(dir + "/b.zst", "too small for the 8-byte header length")
    }

    func testHeaderLengthOverTheLimitIsRefused() throws {
        let path = TestPaths.scratch(self) + "/long.safetensors.zst"
        try compress(path, [rawSafetensors(header: "{}", declaredLength: SafetensorsHeader.maxHeaderLength + 1)])
        assertMalformed(path, "exceeds the limit")
    }

    /// A header describing far more data than the file could hold is refused before any
    /// buffer of that size is made.
    func testImpossibleClaimIsRefusedBeforeAllocating() throws {
        let path = TestPaths.scratch(self) + "/claim.safetensors.zst"
        let huge = #"{"t":{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}}"#
        try compress(path, [rawSafetensors(header: huge)])
        assertMalformed(path, "more than \(readBytes(path).count) bytes of zstd data can hold")
    }

    func testTruncatedFrameIsRefused() throws {
        let path = TestPaths.scratch(self) + "/cut.safetensors.zst"
        try compress(path, [rawSafetensors(header: header, data: data)])
        let whole = readBytes(path)
        for keep in [whole.count - 1, whole.count - 4, whole.count / 2, 4] {
            writeFile(path, Array(whole[..<keep]))
            assertMalformed(path, "zstd: ")
        }
    }

    func testGarbageIsRefused() throws {
        let path = TestPaths.scratch(self) + "/junk.safetensors.zst"
        writeFile(path, Array("this is not zstd at all".utf8))
        assertMalformed(path, "zstd: Unknown frame descriptor")
        writeFile(path, [])
        assertMalformed(path, "zstd: empty file")
    }

    func testTrailingGarbageAfterTheFrameIsRefused() throws {
        let path = TestPaths.scratch(self) + "/tail.safetensors.zst"
        try compress(path, [rawSafetensors(header: header, data: data)])
        writeFile(path, readBytes(path) + Array("trailing garbage".utf8))
        assertMalformed(path, "zstd: Unknown frame descriptor")
    }

    /// A flipped byte in the compressed data is caught (by zstd or by its checksum).
    func testCorruptDataIsRefused() throws {
        let path = TestPaths.scratch(self) + "/flip.safetensors.zst"
        let raw = rawSafetensors(header: header, data: (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try compress(path, [raw])
        var bytes = readBytes(path)
        bytes[bytes.count - 6] ^= 0x5a
        writeFile(path, bytes)
        assertMalformed(path, "zstd: ")
    }
}
