import Foundation
import XCTest
@testable import OpConvertKit

/// extract, resize and combine through `batch`: the same bytes as the library calls the
/// commands make, and their option errors named by manifest line.
final class BatchAdaptOpsTests: XCTestCase {
    let base = TestPaths.fixture("peft/models/llama")
    let tuned = TestPaths.fixture("extract/tuned_lowrank")
    let lora = TestPaths.fixture("peft/adapters/llama_lora")
    let loraB = TestPaths.fixture("peft/adapters/llama_lora_b")

    func files(_ dir: String) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name != ".opconvert-batch.json" {
            out[name] = readBytes(dir + "/" + name)
        }
        return out
    }

    func testExtractResizeCombineJobsEqualTheLibraryCalls() throws {
        let dir = TestPaths.scratch(self)
        let manifest = dir + "/m.jsonl"
        let lines = [
            #"{"op": "extract", "args": {"base": "\#(base)", "tuned": "\#(tuned)", "rank": 4, "seed": 7}, "output": "out/extracted"}"#,
            #"{"op": "resize", "args": {"adapter": "\#(lora)", "rank": 4}, "output": "out/resized"}"#,
            #"{"op": "combine", "args": {"adapters": ["\#(lora)", "\#(loraB)"], "weight": [1, 0.5]}, "output": "out/cat"}"#,
            #"{"op": "combine", "args": {"adapters": ["\#(lora)", "\#(loraB)"], "method": "svd", "energy": 0.9}, "output": "out/svd"}"#,
        ]
        writeFile(manifest, Array((lines.joined(separator: "\n") + "\n").utf8))
        let s = try BatchRunner.run(BatchOptions(manifest: manifest, shard: nil, jobs: 2, verifyInputs: false))
        XCTAssertEqual(s.results.filter(\.ok).count, 4, "\(s.results.compactMap(\.error))")

        let ref = dir + "/ref"
        _ = try Extractor.run(ExtractOptions(base: base, tuned: tuned, output: ref + "/extracted", target: .rank(4), seed: 7))
        _ = try Resizer.run(ResizeOptions(adapter: lora, output: ref + "/resized", target: .rank(4)))
        _ = try Combiner.run(CombineOptions(adapters: [lora, loraB], weights: [1, 0.5], output: ref + "/cat"))
        _ = try Combiner.run(CombineOptions(adapters: [lora, loraB], output: ref + "/svd", method: .svd, target: .energy(0.9)))
        for name in ["extracted", "resized", "cat", "svd"] {
            let got = files(dir + "/out/" + name), want = files(ref + "/" + name)
            XCTAssertFalse(want.isEmpty, name)
            XCTAssertEqual(got.keys.sorted(), want.keys.sorted(), name)
            for (k, v) in want { XCTAssertTrue(got[k] == v, "\(name)/\(k) differs from the library call's output") }
        }
        // A rerun skips all four by their fingerprints.
        let again = try BatchRunner.run(BatchOptions(manifest: manifest, shard: nil, jobs: 1, verifyInputs: false))
        XCTAssertEqual(again.results.filter(\.skipped).count, 4)
    }

    func testConvertJobFactorizesLyCORISLikeTheLibraryCall() throws {
        let dir = TestPaths.scratch(self)
        let root = TestPaths.fixture("sd-lycoris")
        let manifest = dir + "/m.jsonl"
        writeFile(manifest, Array((#"{"op": "convert", "args": {"input": "\#(root)/loha.safetensors", "to": "kohya", "base": "\#(root)/base.safetensors", "rank": 4}, "output": "out/lora.safetensors"}"# + "\n").utf8))
        let s = try BatchRunner.run(BatchOptions(manifest: manifest, shard: nil, jobs: 1, verifyInputs: false))
        XCTAssertEqual(s.results.filter(\.ok).count, 1, "\(s.results.compactMap(\.error))")
        var o = ConvertOptions(input: root + "/loha.safetensors", output: dir + "/ref.safetensors")
        o.to = .kohya
        o.base = root + "/base.safetensors"
        o.lowRank = .rank(4)
        _ = try Converter.run(o)
        XCTAssertEqual(readBytes(dir + "/out/lora.safetensors"), readBytes(dir + "/ref.safetensors"))
        // "rank" without "to" is an error naming the line.
        let bad = dir + "/bad.jsonl"
        writeFile(bad, Array((#"{"op": "convert", "args": {"input": "\#(root)/loha.safetensors", "rank": 4}, "output": "out/x"}"# + "\n").utf8))
        XCTAssertThrowsError(try BatchRunner.run(BatchOptions(manifest: bad, shard: nil, jobs: 1, verifyInputs: false))) { e in
            XCTAssertTrue("\(e)".contains("bad.jsonl:1"), "\(e)")
        }
    }

    func testBadRankOptionsNameTheLine() throws {
        let dir = TestPaths.scratch(self)
        let cases: [(String, String)] = [
            (#"{"op": "resize", "args": {"adapter": "\#(lora)"}, "output": "out/r"}"#, "give \"rank\" or \"energy\""),
            (#"{"op": "resize", "args": {"adapter": "\#(lora)", "rank": 2.5}, "output": "out/r"}"#, "whole number"),
            (#"{"op": "extract", "args": {"base": "\#(base)", "tuned": "\#(tuned)", "rank": 4, "energy": 0.5}, "output": "out/e"}"#, "not both"),
            (#"{"op": "combine", "args": {"adapters": ["\#(lora)"], "method": "linear"}, "output": "out/c"}"#, "\"method\" is one of"),
            (#"{"op": "merge", "args": {"base": "\#(base)", "adapters": ["\#(lora)"], "tie_mode": "sometimes"}, "output": "out/m"}"#, "\"tie_mode\" is one of"),
        ]
        for (i, (line, expected)) in cases.enumerated() {
            let manifest = dir + "/m\(i).jsonl"
            writeFile(manifest, Array((line + "\n").utf8))
            XCTAssertThrowsError(try BatchRunner.run(BatchOptions(manifest: manifest, shard: nil, jobs: 1, verifyInputs: false))) { error in
                XCTAssertTrue("\(error)".contains(":1:"), "\(error)")
                XCTAssertTrue("\(error)".contains(expected), "\(error) lacks \(expected)")
                XCTAssertEqual(ExitStatus.of(error), .dataError, "\(error)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
        }
    }
}
