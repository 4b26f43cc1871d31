import COpConvertKernels
import Foundation
import XCTest
@testable import OpConvertKit
#if canImport(Glibc)
import Glibc
#endif

/// A mapped input truncated (or rewritten) by another process while it is read: reading
/// must not end in SIGBUS, and the change must be reported naming the file.
final class MappedFileGuardTests: XCTestCase {
    private let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    private func makeFile(_ path: String, count: Int, byte: UInt8 = 0xAB) {
        writeFile(path, [UInt8](repeating: byte, count: count))
    }

    private func truncateFile(_ path: String, to size: Int) {
        let fd = open(path, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, off_t(size)), 0)
        close(fd)
    }

    /// Sums every byte, touching every page of the mapping.
    private func sum(_ bytes: UnsafeRawBufferPointer) -> Int {
        var s = 0
        for b in bytes { s += Int(b) }
        return s
    }

    func testTruncatedFileReadsZerosAndIsReported() throws {
        let path = TestPaths.scratch(self) + "/input.bin"
        let size = 4 * page, cut = page + 904
        makeFile(path, count: size)
        let file = try MappedFile(path: path)
        XCTAssertNoThrow(try file.checkIntact())
        XCTAssertEqual(sum(UnsafeRawBufferPointer(rebasing: file.bytes[..<page])), page * 0xAB)
        truncateFile(path, to: cut)

        XCTAssertEqual(sum(file.bytes), cut * 0xAB)   // pages past the cut read as zeros, no signal
        XCTAssertTrue(file.bytes[cut...].allSatisfy { $0 == 0 })
        XCTAssertThrowsError(try file.checkIntact()) { error in
            XCTAssertEqual("\(error)", "\(path): the file changed while it was being read (truncated to \(cut) bytes)")
            XCTAssertEqual(ExitStatus.of(error), .ioError)
        }
        XCTAssertThrowsError(try MappedFile.checkAllIntact()) { error in
            XCTAssertEqual((error as? FileChangedError)?.path, path)
        }
    }

    func testDroppedMappingIsNoLongerChecked() throws {
        let path = TestPaths.scratch(self) + "/dropped.bin"
        makeFile(path, count: 2 * page)
        do {
            let file = try MappedFile(path: path)
            truncateFile(path, to: 10)
            _ = sum(file.bytes)
            XCTAssertThrowsError(try file.checkIntact())
        }
        do {
            try MappedFile.checkAllIntact()
        } catch {
            XCTAssertNotEqual(error.path, path, "a released mapping is still checked: \(error)")
        }
    }

    /// Untouched truncated pages are caught by the size check, without a fault.
    func testTruncationIsReportedEvenIfNeverTouched() throws {
        let path = TestPaths.scratch(self) + "/untouched.bin"
        makeFile(path, count: 3 * page)
        let file = try MappedFile(path: path)
        truncateFile(path, to: 0)
        XCTAssertThrowsError(try file.checkIntact()) { error in
            XCTAssertTrue("\(error)".hasSuffix("(truncated to 0 bytes)"), "\(error)")
        }
    }

    func testModifiedInPlaceIsReported() throws {
        let path = TestPaths.scratch(self) + "/modified.bin"
        makeFile(path, count: page)
        let file = try MappedFile(path: path)
        let fd = open(path, O_WRONLY)
        XCTAssertEqual(pwrite(fd, [UInt8(1)], 1, 100), 1)
        // A modification time that cannot equal the original, whatever the clock's grain.
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000_000, tv_nsec: 0)]
        XCTAssertEqual(futimens(fd, &times), 0)
        close(fd)
        XCTAssertThrowsError(try file.checkIntact()) { error in
            XCTAssertTrue("\(error)".contains("the file changed while it was being read (modified"), "\(error)")
        }
    }

    /// Replacing a file by rename, or deleting it, leaves the mapped contents whole.
    func testReplacedOrDeletedFileIsIntact() throws {
        let dir = TestPaths.scratch(self)
        makeFile(dir + "/a.bin", count: 2 * page)
        makeFile(dir + "/b.bin", count: 2 * page)
        makeFile(dir + "/new.bin", count: 10, byte: 1)
        let a = try MappedFile(path: dir + "/a.bin")
        let b = try MappedFile(path: dir + "/b.bin")
        XCTAssertEqual(Glibc.rename(dir + "/new.bin", dir + "/a.bin"), 0)
        XCTAssertEqual(unlink(dir + "/b.bin"), 0)
        XCTAssertEqual(sum(a.bytes), 2 * page * 0xAB)
        XCTAssertNoThrow(try a.checkIntact())
        XCTAssertNoThrow(try b.checkIntact())
    }

    /// Anonymous (decompressed) memory has nothing that can change under it.
    func testDecompressedMappingIsAlwaysIntact() throws {
        let path = TestPaths.scratch(self) + "/m.safetensors.zst"
        let out = try ZstdOutputFile(path: path)
        try rawSafetensors(header: "{}").withUnsafeBytes { try out.write($0) }
        try out.commit(sync: false)
        let f = try SafetensorsFile.open(path)
        unlink(path)
        XCTAssertNoThrow(try f.mapping.checkIntact())
    }

    /// With the fault table full, mappings still work, unguarded; their truncation is still
    /// caught by the size check.
    func testFullTableFallsBackToUnguardedMappings() throws {
        let dir = TestPaths.scratch(self)
        var dummy: UInt8 = 0
        var taken: [Int32] = []
        defer { taken.forEach(opc_guard_unregister) }
        while true {
            let slot = withUnsafeBytes(of: &dummy) { opc_guard_register($0.baseAddress, 1) }
            if slot < 0 { break }
            taken.append(slot)
            XCTAssertLessThanOrEqual(taken.count, Int(OPC_GUARD_SLOTS))
            if taken.count > Int(OPC_GUARD_SLOTS) { break }
        }
        makeFile(dir + "/x.bin", count: 2 * page)
        let file = try MappedFile(path: dir + "/x.bin")
        XCTAssertEqual(sum(file.bytes), 2 * page * 0xAB)
        truncateFile(dir + "/x.bin", to: 1)
        XCTAssertThrowsError(try file.checkIntact())
    }
}
