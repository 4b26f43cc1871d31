import Foundation
import XCTest
@testable import OpConvertKit

/// Byte sizes that cannot trap, input kinds told apart before parsing, and the warnings
/// collector (isolation, fallback, the warnings the library emits).
final class InputChecksAndWarningsTests: XCTestCase {
    func testParseByteSizeAcceptsUnitsAndRefusesOverflowZeroAndNonsense() {
        let good: [(String, Int)] = [("5GB", 5_000_000_000), ("2GiB", 2 << 30), ("1000", 1000), ("1.5MB", 1_500_000),
                                     (" 500 mb ", 500_000_000), ("1B", 1), ("1024TiB", 1 << 50), ("0.5KB", 500), ("1e3", 1000)]
        for (text, bytes) in good { XCTAssertEqual(parseByteSize(text), bytes, text) }
        let bad = ["99999999999999999999GB", "99999999999999999999", "9223372036854775807GB", "9223372036854775807",
                   "1025TiB", "1e300GB", "0", "0GB", "-5MB", "-1", "0.0001B", "nan", "inf", "infinityGB", "", "GB", "5XB", "0x10", "1,000"]
        for text in bad { XCTAssertNil(parseByteSize(text), text) }
    }

    func testSniffTellsFormatsApart() throws {
        let dir = TestPaths.scratch(self)
        let cases: [(String, [UInt8], InputKind.FileContent)] = [
            ("empty", [], .empty),
            ("text", Array("plain words\n".utf8), .text),
            ("json", Array("  {\"a\": 1}".utf8), .json),
            ("zst", [0x28, 0xB5, 0x2F, 0xFD, 0, 0, 0, 0, 0, 0], .zstd),
            ("zip", [0x50, 0x4B, 0x03, 0x04, 1, 2, 3], .zip),
            ("pickle", [0x80, 0x02, 0x7D, 0x71], .pickle),
            ("st", rawSafetensors(header: "{}"), .safetensorsLike),
            ("bin", [0xFF, 0x00, 0x13, 0x88, 0x01], .binary),
        ]
        for (name, bytes, want) in cases {
            writeFile(dir + "/" + name, bytes)
            XCTAssertEqual(InputKind.sniff(dir + "/" + name), want, name)
        }
        XCTAssertEqual(InputKind.of(dir + "/missing"), .missing)
        XCTAssertEqual(InputKind.of(TestPaths.fixture("peft/adapters/llama_lora")), .peftAdapter)
        XCTAssertEqual(InputKind.of(TestPaths.fixture("op/checkpoints/op_lora_f32")), .opCheckpoint)
        XCTAssertEqual(InputKind.of(TestPaths.fixture("peft/models/llama")), .model)
    }

    func testWrongInputsMapToTheDocumentedStatus() throws {
        let dir = TestPaths.scratch(self)
        writeFile(dir + "/words.safetensors", Array("not weights at all".utf8))
        XCTAssertThrowsError(try TensorStore.open(dir + "/words.safetensors")) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertEqual("\(error)", "\(dir)/words.safetensors: not a safetensors file: a text file")
        }
        XCTAssertThrowsError(try TensorStore.open(dir + "/nothing")) { XCTAssertEqual(ExitStatus.of($0), .noInput) }
        XCTAssertThrowsError(try OPCheckpoint(path: TestPaths.fixture("peft/adapters/llama_lora"))) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertTrue("\(error)".contains("a PEFT adapter, not an OP checkpoint"), "\(error)")
        }
        XCTAssertThrowsError(try LoraAdapter.openPEFT(TestPaths.fixture("peft/models/llama"))) { error in
            XCTAssertEqual(ExitStatus.of(error), .dataError)
            XCTAssertTrue("\(error)".contains("a model directory, not an adapter"), "\(error)")
        }
        // A model directory that also holds an adapter_config.json is still a model.
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: TestPaths.fixture("peft/models/llama"), toPath: model)
        try FileManager.default.copyItem(atPath: TestPaths.fixture("peft/adapters/llama_lora/adapter_config.json"), toPath: model + "/adapter_config.json")
        XCTAssertEqual(try TensorStore.open(model).tensorCount, try TensorStore.open(TestPaths.fixture("peft/models/llama")).tensorCount)
        XCTAssertThrowsError(try TensorStore.open(TestPaths.fixture("peft/adapters/llama_lora"))) { error in
            XCTAssertTrue("\(error)".contains("a PEFT adapter, not a model"), "\(error)")
        }
        // A damaged safetensors file keeps its precise error (it is not called "not safetensors").
        XCTAssertThrowsError(try TensorStore.open(TestPaths.fixture("safetensors/malformed/header_past_eof_by_one.safetensors"))) { error in
            XCTAssertFalse("\(error)".contains("not a safetensors file"), "\(error)")
            XCTAssertEqual(ExitStatus.of(error), .dataError)
        }
    }

    func testCollectorsAreIsolatedAndUnboundWarningsFallBack() async throws {
        _ = Warnings.takeUnbound()
        let (value, outer) = Warnings.collect { () -> Int in
            Warnings.emit("outer one")
            let (_, inner) = Warnings.collect { Warnings.emit("inner") }
            XCTAssertEqual(inner, ["inner"])
            Warnings.emit("outer one")   // kept once
            Warnings.emit("outer two")
            return 7
        }
        XCTAssertEqual(value, 7)
        XCTAssertEqual(outer, ["outer one", "outer two"])
        XCTAssertEqual(Warnings.takeUnbound(), [])

        // Concurrent callers each see only their own.
        let results = await withTaskGroup(of: (Int, [String]).self) { group in
            for i in 0..<8 {
                group.addTask {
                    let (_, w) = Warnings.collect { for k in 0..<50 { Warnings.emit("task \(i) warning \(k)") } }
                    return (i, w)
                }
            }
            var all: [(Int, [String])] = []
            for await r in group { all.append(r) }
            return all
        }
        for (i, w) in results { XCTAssertEqual(w, (0..<50).map { "task \(i) warning \($0)" }) }

        Warnings.emit("nobody collects this")
        XCTAssertEqual(Warnings.takeUnbound(), ["nobody collects this"])
        XCTAssertEqual(Warnings.takeUnbound(), [])

        // A throwing body still hands its warnings to the enclosing collector when forwarding.
        struct Boom: Error {}
        let (_, forwarded) = Warnings.collect {
            _ = try? Warnings.collectForwarding { () throws -> Int in Warnings.emit("before the error"); throw Boom() }
        }
        XCTAssertEqual(forwarded, ["before the error"])
    }

    // MARK: warnings the library emits

    func makeBase(_ dir: String, dtype: DType, rows: [[Float]]) throws -> String {
        let path = dir + "/base.safetensors"
        let flat = rows.flatMap { $0 }
        var bytes = [UInt8](repeating: 0, count: flat.count * dtype.byteWidth!)
        flat.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { DTypeConversion.encode(v.baseAddress!, to: $0.baseAddress!, dtype, count: flat.count) } }
        try SafetensorsWriter.write(path: path, tensors: [(TensorSpec(name: "model.proj.weight", dtype: dtype, shape: [rows.count, rows[0].count]), bytes)],
                                    metadata: ["format": "pt"])
        return path
    }

    func makeAdapter(_ dir: String, config: [(String, JSONValue)], a: [Float], b: [Float], r: Int, out: Int, inF: Int, magnitude: [Float]? = nil) throws -> String {
        let path = dir + "/adapter-\(UUID().uuidString)"
        try PEFTAdapterWriter.write(to: path, config: .object([("peft_type", .string("LORA"))] + config), modules: [
            MaterializedModule(path: "model.proj", a: a, aShape: [r, inF], b: b, bShape: [out, r], magnitude: magnitude, rank: r),
        ], overwrite: false)
        return path
    }

    func testMissingRankAndAlphaWarnWithPEFTDefaults() throws {
        let dir = TestPaths.scratch(self)
        let r = 8
        let path = try makeAdapter(dir, config: [], a: [Float](repeating: 0.1, count: r * 2), b: [Float](repeating: 0, count: 2 * r), r: r, out: 2, inF: 2)
        let (adapter, warnings) = try Warnings.collect { try LoraAdapter.openPEFT(path) }
        XCTAssertEqual(adapter.modules.first?.scaling, 1)
        XCTAssertEqual(warnings, [
            "\(path)/adapter_config.json: \"r\" is missing; using PEFT's default r = 8",
            "\(path)/adapter_config.json: \"lora_alpha\" is missing; using PEFT's default lora_alpha = 8",
        ])
        let full = try makeAdapter(dir, config: [("r", .int(8)), ("lora_alpha", .int(16))], a: [Float](repeating: 0.1, count: r * 2),
                                   b: [Float](repeating: 0, count: 2 * r), r: r, out: 2, inF: 2)
        XCTAssertEqual(try Warnings.collect { try LoraAdapter.openPEFT(full) }.1, [])
    }

    func testMergeWarnsAboutWeightZeroAndNonFiniteResults() throws {
        let dir = TestPaths.scratch(self)
        let base = try makeBase(dir, dtype: .f16, rows: [[60000, 1], [60000, 3]])
        let adapter = try makeAdapter(dir, config: [("r", .int(1)), ("lora_alpha", .int(1))], a: [1, 0], b: [10000, 10000], r: 1, out: 2, inF: 2)
        let (summary, warnings) = try Warnings.collect {
            try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1), (adapter, 0)], output: dir + "/o.safetensors", showProgress: false))
        }
        XCTAssertEqual(warnings, [
            "\(adapter): --weight 0 given: this adapter has no effect on the output",
            "merge result has 2 NaN/Inf values in 1 tensor, first in module model.proj+model.proj (tensor model.proj.weight); --safe refuses such results",
        ])
        XCTAssertEqual(summary.warnings, warnings, "the summary and the collector agree")
        // Finite results: no warning.
        let (_, none) = try Warnings.collect {
            try Merger.run(MergeOptions(base: base, adapters: [(adapter, 0.0001)], output: dir + "/p.safetensors", showProgress: false))
        }
        XCTAssertEqual(none, [])
    }

    func testZeroNormDoRAWarnsOnceAndNotAgainAsNonFinite() throws {
        let dir = TestPaths.scratch(self)
        let base = try makeBase(dir, dtype: .f32, rows: [[0, 0], [2, 3]])
        let adapter = try makeAdapter(dir, config: [("r", .int(1)), ("lora_alpha", .int(1)), ("use_dora", .bool(true))],
                                      a: [1, 1], b: [0, 1], r: 1, out: 2, inF: 2, magnitude: [1, 1])
        let (summary, warnings) = try Warnings.collect {
            try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/o.safetensors", showProgress: false))
        }
        XCTAssertEqual(warnings, ["DoRA module model.proj: zero weight norm at index 0 gives non-finite weights"])
        XCTAssertEqual(summary.warnings, warnings)
    }

    func testConvertKeepsAdapterConfigAndCheckpointFiles() throws {
        let dir = TestPaths.scratch(self)
        let out = dir + "/lora-f16"
        let s = try Converter.run(ConvertOptions(input: TestPaths.fixture("peft/adapters/llama_lora"), output: out, dtype: .f16, showProgress: false))
        XCTAssertEqual(s.files, ["adapter_model.safetensors", "adapter_config.json"])
        let adapter = try LoraAdapter.openPEFT(out)
        XCTAssertEqual(adapter.modules.count, 14)
        XCTAssertTrue(adapter.modules.allSatisfy { $0.a.dtype == .f16 && $0.b.dtype == .f16 })
        let report = try Inspector.inspect(out)
        XCTAssertEqual(report.kind, "peft-adapter")
    }
}
