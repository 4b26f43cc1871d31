import Foundation
import XCTest
@testable import OpConvertKit

/// The fuzz entry points agree with the fixtures, and every committed seed and reproducer in
/// fixtures/fuzz/ runs through its target without tripping a check (a trap ends the run).
final class FuzzEntryPointsTests: XCTestCase {
    private func files(in relative: String) throws -> [String] {
        let dir = TestPaths.fixture(relative)
        return try FileManager.default.contentsOfDirectory(atPath: dir).sorted().map { dir + "/" + $0 }
    }

    private func run(_ path: String, _ entry: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        readBytes(path).withUnsafeBytes { entry($0) }
    }

    func testHeaderAndFileTargetsAcceptEveryValidFixture() throws {
        let valid = try files(in: "safetensors/valid").filter { $0.hasSuffix(".safetensors") }
        XCTAssertGreaterThan(valid.count, 20)
        for path in valid {
            XCTAssertTrue(run(path, FuzzEntryPoints.safetensorsHeader), path)
            XCTAssertTrue(run(path, FuzzEntryPoints.safetensorsFile), path)
        }
    }

    func testHeaderTargetFollowsTheMalformedManifest() throws {
        let manifest = try JSONParser.parse(readBytes(TestPaths.fixture("safetensors/malformed/manifest.json")))
        let cases = try XCTUnwrap(manifest.arrayValue)
        XCTAssertGreaterThan(cases.count, 100)
        for c in cases {
            let name = try XCTUnwrap(c["file"]?.stringValue)
            let expect = try XCTUnwrap(c["expect"]?.stringValue)
            let path = TestPaths.fixture("safetensors/malformed/" + name)
            XCTAssertEqual(run(path, FuzzEntryPoints.safetensorsHeader), expect == "accept", name)
        }
    }

    func testFileTargetReadsZstdCompressedInput() throws {
        let scratch = TestPaths.scratch(self)
        let raw = TestPaths.fixture("safetensors/valid/many_mixed.safetensors")
        let compressed = scratch + "/many_mixed.safetensors.zst"
        let zstd = Process()
        zstd.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        zstd.arguments = ["zstd", "-q", raw, "-o", compressed]
        try zstd.run()
        zstd.waitUntilExit()
        try XCTSkipIf(zstd.terminationStatus != 0, "zstd command not available")
        XCTAssertTrue(run(compressed, FuzzEntryPoints.safetensorsFile))
        var truncated = readBytes(compressed)
        truncated.removeLast(truncated.count / 2)
        XCTAssertFalse(truncated.withUnsafeBytes { FuzzEntryPoints.safetensorsFile($0) })
    }

    /// Found by the file target: a zstd frame header may declare any content size; one of
    /// 2^63 or more used to trap converting it to Int, one that cannot be mapped was an I/O error.
    func testZstdFrameDeclaringAnImpossibleSizeIsRefusedAsMalformed() throws {
        let scratch = TestPaths.scratch(self)
        for (name, size) in [("2pow63", UInt64(1) << 63), ("2pow61", UInt64(1) << 61), ("max-2", UInt64.max - 2)] {
            let path = scratch + "/\(name).safetensors.zst"
            writeFile(path, [0x28, 0xB5, 0x2F, 0xFD, 0xE0] + withUnsafeBytes(of: size.littleEndian) { Array($0) } + [0x01, 0x00, 0x00])
            XCTAssertThrowsError(try SafetensorsFile.open(path), name) { error in
                XCTAssertTrue(error is ZstdError, "\(name): \(error)")
                XCTAssertTrue("\(error)".hasPrefix(path + ": zstd: "), "\(error)")
            }
            XCTAssertFalse(run(path, FuzzEntryPoints.safetensorsFile), name)
        }
    }

    func testConfigTargetsAcceptTheFixtureConfigs() throws {
        for dir in try files(in: "op/checkpoints") {
            XCTAssertTrue(run(dir + "/op_config.json", FuzzEntryPoints.opConfig), dir)
        }
        XCTAssertTrue(run(TestPaths.fixture("peft/adapters/gpt2_lora/adapter_config.json"), FuzzEntryPoints.adapterConfig))
        XCTAssertTrue(run(TestPaths.fixture("peft/models/llama/model.safetensors.index.json"), FuzzEntryPoints.shardIndex))
        XCTAssertTrue(run(TestPaths.fixture("op/keymaps/hypernet.json"), FuzzEntryPoints.keyMap))
    }

    func testConfigTargetsRefuseBadInputWithoutTrapping() {
        func bytes(_ text: String, _ entry: (UnsafeRawBufferPointer) -> Bool) -> Bool {
            Array(text.utf8).withUnsafeBytes { entry($0) }
        }
        XCTAssertFalse(bytes(#"{"peft_type":"LORA","r":0}"#, FuzzEntryPoints.adapterConfig))
        XCTAssertFalse(bytes(#"{"peft_type":"LORA","layer_replication":[[0,1]]}"#, FuzzEntryPoints.adapterConfig))
        XCTAssertFalse(bytes(#"{"format":"op-lora","format_version":2}"#, FuzzEntryPoints.opConfig))
        XCTAssertFalse(bytes(#"{"weight_map":{"w":"../x.safetensors"}}"#, FuzzEntryPoints.shardIndex))
        XCTAssertFalse(bytes(#"[{"pattern":"(","replacement":""}]"#, FuzzEntryPoints.keyMap))
        XCTAssertFalse(bytes("", FuzzEntryPoints.keyMap))
        XCTAssertFalse(bytes("{", FuzzEntryPoints.shardIndex))
    }

    func testShardIndexRoundTripKeepsEscapedNames() {
        let index = #"{"metadata":{"total_size":1},"weight_map":{"a\tb":"s1.safetensors","caf\u00e9\"":"s2.safetensors"}}"#
        XCTAssertTrue(Array(index.utf8).withUnsafeBytes { FuzzEntryPoints.shardIndex($0) })
        // A NUL in a name is refused (json-c would cut the name there), not mangled.
        let nul = #"{"metadata":{"total_size":1},"weight_map":{"a\u0000b":"s1.safetensors"}}"#
        XCTAssertFalse(Array(nul.utf8).withUnsafeBytes { FuzzEntryPoints.shardIndex($0) })
    }

    func testEveryCommittedSeedRunsThroughItsTarget() throws {
        let targets: [(String, (UnsafeRawBufferPointer) -> Bool)] = [
            ("header", FuzzEntryPoints.safetensorsHeader), ("file", FuzzEntryPoints.safetensorsFile),
            ("adapter_config", FuzzEntryPoints.adapterConfig), ("op_config", FuzzEntryPoints.opConfig),
            ("shard_index", FuzzEntryPoints.shardIndex), ("key_map", FuzzEntryPoints.keyMap),
        ]
        for (target, entry) in targets {
            let seeds = try files(in: "fuzz/" + target)
            XCTAssertFalse(seeds.isEmpty, "no seeds for \(target)")
            var accepted = 0
            for seed in seeds where run(seed, entry) { accepted += 1 }
            // Each corpus holds inputs that parse, not only refusals.
            XCTAssertGreaterThan(accepted, 0, target)
        }
    }
}
