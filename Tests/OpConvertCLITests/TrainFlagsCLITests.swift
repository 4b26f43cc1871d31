import Foundation
import XCTest
import OpConvertKit

/// `train` and `train factorize` flag values that used to trap or exit 1 are usage errors
/// (64), and a diverging run exits non-zero with nothing at -o.
final class TrainFlagsCLITests: XCTestCase {
    func run(_ args: [String]) throws -> CLIRun { try runOpconvert(args) }
    func scratch() -> String { cliScratch() }

    /// A 6 -> 4 -> 3 network and 20 rows, in `dir`.
    func problem(_ dir: String) throws -> (base: String, data: String) {
        var rng = SeededRandom(seed: 3)
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        try SafetensorsWriter.write(path: base, tensors: [
            (TensorSpec(name: "l0.weight", dtype: .f32, shape: [4, 6]), (0..<24).map { _ in rng.normal() * 0.5 }.floatBytes),
            (TensorSpec(name: "l1.weight", dtype: .f32, shape: [3, 4]), (0..<12).map { _ in rng.normal() * 0.5 }.floatBytes),
        ], metadata: nil)
        let labels = (0..<20).map { _ in Int64(rng.next() % 3) }
        try SafetensorsWriter.write(path: data, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [20, 6]), (0..<120).map { _ in rng.normal() }.floatBytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [20]), labels.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        return (base, data)
    }

    func testFactorizeShapeAndCountFlagsAreUsageErrors() throws {
        let cases: [([String], String)] = [
            (["--random", "0x5"], "0x5"), (["--random", "5x"], "5x"), (["--random", "5xx5"], "5xx5"), (["--random", "ax5"], "ax5"),
            (["--random", "99999999x99999999"], "limit"), (["--random", "10x10", "--rank", "11"], "--rank 11"),
            (["--rank", "0"], "--rank"), (["--steps", "0"], "--steps"), (["--steps=-4"], "--steps"), (["--lr", "nan"], "--lr"),
            (["--methods", "mf,,op-mf"], "--methods"), (["--target", "m.safetensors", "--random", "4x4"], "--random"),
        ]
        for (args, fragment) in cases {
            let r = try run(["train", "factorize", "--no-progress"] + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(fragment), "\(args): \(r.stderr)")
        }
    }

    func testFinetuneFlagValuesAreUsageErrors() throws {
        let dir = scratch()
        let (base, data) = try problem(dir)
        let cases: [([String], String)] = [
            (["--rank", "0"], "--rank"), (["--batch-size", "0"], "--batch-size"), (["--epochs", "0"], "--epochs"),
            (["--mlp-hidden", "0"], "--mlp-hidden"), (["--z-dim", "0"], "--z-dim"), (["--lr", "inf"], "--lr"),
            (["--threads=-1"], "--threads"), (["--warmup-steps=-1"], "--warmup-steps"), (["--max-loss-growth", "0.5"], "--max-loss-growth"),
            (["--lr-sweep", "1e-3,abc"], "abc"), (["--lr-sweep", "1e-3", "--methods", "lora,foo"], "foo"),
            (["--layers", "l9"], "l9"), (["--rank", "4"], "--rank 4"),  // l1 is 4 -> 3: rank 3 at most
        ]
        for (args, fragment) in cases {
            // --lr-sweep refuses -o, so it gets none.
            let output = args.first == "--lr-sweep" ? [] : ["-o", dir + "/out"]
            let r = try run(["train", "--base", base, "--data", data, "--no-progress"] + output + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(fragment), "\(args): \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    }

    func testDivergingRunExitsNonZeroAndSavesNothing() throws {
        let dir = scratch()
        let (base, data) = try problem(dir)
        let r = try run(["train", "--base", base, "--data", data, "--method", "lora", "--rank", "2", "--lr", "1e3", "--batch-size", "5",
                             "--epochs", "3", "-o", dir + "/out", "--loss-csv", dir + "/loss.csv", "--json"])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("diverged at step"), r.stderr)
        let error = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(error?["exit_code"] as? Int, 65, r.stdout)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["data.safetensors", "net.safetensors"])
        // The same data trains at a sane rate.
        let ok = try run(["train", "--base", base, "--data", data, "--method", "lora", "--rank", "2", "--lr", "1e-2", "-o", dir + "/out", "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }
}

private extension Array where Element == Float {
    var floatBytes: [UInt8] { withUnsafeBytes { [UInt8]($0) } }
}
