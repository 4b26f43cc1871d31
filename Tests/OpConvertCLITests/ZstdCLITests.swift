import Foundation
import XCTest
import OpConvertKit

/// A bad .safetensors.zst ends the command with exit 65 and one line naming the file.
final class ZstdCLITests: XCTestCase {
    private func run(_ args: [String]) throws -> (status: Int32, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: e, as: UTF8.self))
    }

    private func scratch() -> String {
        let path = NSTemporaryDirectory() + "opconvert-cli-zstd-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testCorruptZstdIsMalformedInput() throws {
        let path = scratch() + "/m.safetensors.zst"
        FileManager.default.createFile(atPath: path, contents: Data("not zstd".utf8))
        let r = try run(["inspect", path])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(path): zstd: Unknown frame descriptor"), r.stderr)
    }

    /// An OP checkpoint whose weights are a frame of zeros (a small zstd bomb).
    func testZeroBombCheckpointIsMalformedInput() throws {
        let dir = scratch()
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/fixtures/op/checkpoints/op_lora_bf16/op_config.json",
                                         toPath: dir + "/op_config.json")
        let weights = dir + "/op_model.safetensors.zst"
        let out = try ZstdOutputFile(path: weights)
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        for _ in 0..<16 { try zeros.withUnsafeBytes { try out.write($0) } }
        try out.commit(sync: false)
        let r = try run(["inspect", dir])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains(weights + ": header is not valid JSON"), r.stderr)
    }
}
