import Foundation
import XCTest
import OpConvertKit

/// A bad .safetensors.zst ends the command with exit 65 and one line naming the file.
final class ZstdCLITests: XCTestCase {
    private func run(_ args: [String]) throws -> CLIRun { try runOpconvert(args) }
    private func scratch() -> String { cliScratch() }

    func testCorruptZstdIsMalformedInput() throws {
        let path = scratch() + "/m.safetensors.zst"
        FileManager.default.createFile(atPath: path, contents: Data("not zstd".utf8))
        let r = try run(["inspect", path])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: \(path): not zstd-compressed"), r.stderr)
        // Bytes that look like a zstd frame but are not one reach the decoder, which says why.
        FileManager.default.createFile(atPath: path, contents: Data([0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]))
        let bad = try run(["inspect", path])
        XCTAssertEqual(bad.status, 65, bad.stderr)
        XCTAssertTrue(bad.stderr.contains(path) && bad.stderr.contains("zstd"), bad.stderr)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1, bad.stderr)
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
