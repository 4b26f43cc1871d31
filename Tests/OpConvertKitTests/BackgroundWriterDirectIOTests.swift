import Foundation
import XCTest
@testable import OpConvertKit

/// BackgroundWriter gathers writes into aligned slots (direct I/O where the file system
/// allows it, buffered otherwise): whatever mix of copied, in-place and stable writes,
/// of any sizes and alignments, the file holds exactly the bytes in order.
final class BackgroundWriterDirectIOTests: XCTestCase {
    private func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ ($0 >> 7) ^ seed) }
    }

    /// Writes a mix of pieces through a writer with one-page slots and returns what it
    /// should have written and the path.
    private func writeMix(direct: Bool, tailBytes: Int) throws -> (expected: [UInt8], path: String, isDirect: Bool) {
        let path = TestPaths.scratch(self) + "/out.bin"
        let writer = BackgroundWriter(file: try OutputFile(path: path), direct: direct, slotSize: 4096, slots: 3)
        var expected: [UInt8] = []
        // A small header, then pieces that straddle slot boundaries.
        let header = pattern(88, seed: 1)
        try header.withUnsafeBytes { try writer.write($0) }
        expected += header
        // In place, 3000-byte units (a row of a tensor): units cross the 4096-byte slots.
        var units = 0
        while units < 7 {
            let taken = try writer.writeInPlace(granule: 3000, maxCount: (7 - units) * 3000) { region in
                XCTAssertEqual(region.count % 3000, 0)
                XCTAssertGreaterThan(region.count, 0)
                let bytes = self.pattern(region.count, seed: 10 + units)
                bytes.withUnsafeBytes { region.copyMemory(from: $0) }
                expected += bytes
            }
            units += taken / 3000
        }
        XCTAssertEqual(units, 7)
        // A unit larger than a slot.
        _ = try writer.writeInPlace(granule: 10_000, maxCount: 10_000) { region in
            let bytes = self.pattern(region.count, seed: 20)
            bytes.withUnsafeBytes { region.copyMemory(from: $0) }
            expected += bytes
        }
        // A stable piece (a mapped input), whose pages `after` may release.
        let stable = pattern(9_999, seed: 30)
        let released = Counter()
        try stable.withUnsafeBytes { buf in
            try writer.writeStable(buf, after: { piece in released.add(piece.count) })
            expected += stable
            // Stable bytes must stay valid until commit: commit inside the closure.
            let tail = pattern(tailBytes, seed: 40)
            try tail.withUnsafeBytes { try writer.write($0) }
            expected += tail
            try writer.commit(sync: true)
        }
        XCTAssertEqual(released.value, stable.count, "every stable byte handed to `after` once")
        return (expected, path, writer.isDirect)
    }

    func testDirectWriterWritesExactlyTheBytesInOrder() throws {
        for tail in [0, 1, 4095, 4096, 5000] {
            let (expected, path, _) = try writeMix(direct: true, tailBytes: tail)
            let got = readBytes(path)
            XCTAssertEqual(got.count, expected.count, "tail \(tail): file size")
            XCTAssertTrue(got == expected, "tail \(tail): file bytes")
        }
    }

    func testBufferedWriterWritesExactlyTheBytesInOrder() throws {
        let (expected, path, isDirect) = try writeMix(direct: false, tailBytes: 123)
        XCTAssertFalse(isDirect)
        XCTAssertTrue(readBytes(path) == expected)
    }

    func testLargeSafetensorsOutputsAskForDirectIO() throws {
        let dir = TestPaths.scratch(self)
        let small = BackgroundWriter(file: try OutputFile(path: dir + "/small"), expectedSize: 1 << 20)
        XCTAssertFalse(small.isDirect, "small outputs stay buffered")
        try small.commit(sync: false)
    }

    func testWriterDroppedMidSlotLeavesNoFile() throws {
        let dir = TestPaths.scratch(self)
        for direct in [true, false] {
            do {
                let writer = BackgroundWriter(file: try OutputFile(path: dir + "/out"), direct: direct, slotSize: 4096, slots: 2)
                let bytes = pattern(3000, seed: 7)   // less than a slot: nothing queued yet
                try bytes.withUnsafeBytes { try writer.write($0) }
                // Dropped here without commit, as after an error: no trap, nothing left.
            }
            XCTAssertEqual(try FileSystem.list(dir), [], "direct \(direct)")
        }
    }

    private final class Counter: @unchecked Sendable {
        // Guarded by `lock`: `after` runs on the writer's queue.
        private let lock = NSLock()
        private var total = 0
        func add(_ n: Int) { lock.withLock { total += n } }
        var value: Int { lock.withLock { total } }
    }
}
