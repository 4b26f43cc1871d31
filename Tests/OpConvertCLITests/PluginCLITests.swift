import Foundation
import XCTest
import OpConvertKit

/// `opconvert plugin list|check|bench` and `train --device`, as scripts see them.
final class PluginCLITests: XCTestCase {
    func run(_ args: [String]) throws -> CLIRun { try runOpconvert(args) }

    func object(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let o = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try XCTUnwrap(o as? [String: Any], file: file, line: line)
    }

    var cudaPluginBuilt: Bool {
        let dir = (CLITests.binary as NSString).deletingLastPathComponent
        return FileManager.default.fileExists(atPath: dir + "/" + KernelPlugin.cudaLibraryName)
    }

    var cpuPluginPath: String { (CLITests.binary as NSString).deletingLastPathComponent + "/" + KernelPlugin.defaultLibraryName }

    func testCheckPassesOnTheCPUPlugin() throws {
        let r = try run(["plugin", "check", "--device", "cpu"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let last = try XCTUnwrap(lines.last)
        let counts = last.split(separator: " ")
        XCTAssertEqual(counts.count, 4, last)
        XCTAssertEqual(last, "\(counts[0]) passed, 0 failed")
        let passed = try XCTUnwrap(Int(counts[0]))
        XCTAssertGreaterThan(passed, 150)
        XCTAssertEqual(lines.filter { $0.hasPrefix("ok   ") }.count, passed)
        XCTAssertFalse(r.stdout.contains("FAIL"))
        XCTAssertTrue(lines.contains("ok   gemm NT 17x33x65 lda+3 ldb+5 ldc+2 +4B alpha=0.75 beta=-0.5"), r.stdout)

        let j = try run(["plugin", "check", "--device", "cpu", "--json"])
        XCTAssertEqual(j.status, 0, j.stderr)
        let o = try object(j.stdout)
        XCTAssertEqual(o["plugin"] as? String, "cpu-openblas")
        XCTAssertEqual(o["device"] as? String, "cpu")
        XCTAssertEqual(o["abi_version"] as? Int, 3)
        XCTAssertEqual(o["failed"] as? Int, 0)
        XCTAssertEqual(o["passed"] as? Int, passed)
        let cases = try XCTUnwrap(o["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, passed)
        XCTAssertTrue(cases.allSatisfy { $0["ok"] as? Bool == true && $0["name"] is String })
    }

    func testCompileOnlyOnTheCPUPluginPassesWithNothingToCompile() throws {
        let r = try run(["plugin", "check", "--compile-only", "--device", "cpu"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("compiles nothing"), r.stdout)
        XCTAssertTrue(r.stdout.hasSuffix("0 passed, 0 failed\n"), r.stdout)
        let p = try run(["plugin", "check", "--compile-only", "--plugin", cpuPluginPath, "--json"])
        XCTAssertEqual(p.status, 0, p.stderr)
        XCTAssertEqual(try object(p.stdout)["passed"] as? Int, 0)
    }

    func testListShowsTheCPUPluginAndItsDevice() throws {
        let r = try run(["plugin", "list", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let plugins = try XCTUnwrap(try object(r.stdout)["plugins"] as? [[String: Any]])
        XCTAssertEqual(plugins.map { $0["kind"] as? String }, ["cpu", "cuda"])
        let cpu = plugins[0]
        XCTAssertEqual(cpu["name"] as? String, "cpu-openblas")
        XCTAssertEqual(cpu["abi_version"] as? Int, 3)
        XCTAssertEqual(cpu["path"] as? String, cpuPluginPath)
        let probe = try XCTUnwrap(cpu["probe"] as? [String: Any])
        XCTAssertEqual(probe["ok"] as? Bool, true)
        XCTAssertEqual(probe["device_count"] as? Int, 1)
        let devices = try XCTUnwrap(cpu["devices"] as? [[String: Any]])
        XCTAssertEqual(devices.count, 1)
        XCTAssertTrue((devices[0]["name"] as? String ?? "").hasPrefix("CPU (OpenBLAS"))
        XCTAssertGreaterThan(devices[0]["total_memory_bytes"] as? Int ?? 0, 0)
        if !cudaPluginBuilt {
            XCTAssertEqual(plugins[1]["error"] as? String, "not found")
        }
        let plain = try run(["plugin", "list"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertTrue(plain.stdout.contains("cpu-openblas, ABI version 3"), plain.stdout)
        XCTAssertTrue(plain.stdout.contains("probe: ok, 1 device"), plain.stdout)
    }

    func testBenchReportsGemmAndKernelTimings() throws {
        let r = try run(["plugin", "bench", "--device", "cpu", "--sizes", "32,48", "--shapes", "64x64x4", "--repeat", "2",
                         "--kernel-elements", "1000", "--softmax", "4x10", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try object(r.stdout)
        let gemm = try XCTUnwrap(o["gemm"] as? [[String: Any]])
        XCTAssertEqual(gemm.map { [$0["m"] as? Int, $0["n"] as? Int, $0["k"] as? Int] }, [[32, 32, 32], [48, 48, 48], [64, 64, 4]])
        XCTAssertTrue(gemm.allSatisfy { ($0["gflops"] as? Double ?? 0) > 0 && $0["repeats"] as? Int == 2 })
        let kernels = try XCTUnwrap(o["kernels"] as? [[String: Any]]).compactMap { $0["kernel"] as? String }
        XCTAssertEqual(kernels, ["adamw", "axpy", "divide", "softmax_xent", "row_norms"])
        let bad = try run(["plugin", "bench", "--device", "cpu", "--shapes", "4x4"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("4x4"), bad.stderr)
    }

    // MARK: - --device

    /// A 6 -> 4 -> 3 network and 20 rows.
    func problem(_ dir: String) throws -> (base: String, data: String) {
        var rng = SeededRandom(seed: 7)
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        try SafetensorsWriter.write(path: base, tensors: [
            (TensorSpec(name: "l0.weight", dtype: .f32, shape: [4, 6]), (0..<24).map { _ in rng.normal() * 0.5 }.pluginTestBytes),
            (TensorSpec(name: "l1.weight", dtype: .f32, shape: [3, 4]), (0..<12).map { _ in rng.normal() * 0.5 }.pluginTestBytes),
        ], metadata: nil)
        try SafetensorsWriter.write(path: data, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [20, 6]), (0..<120).map { _ in rng.normal() }.pluginTestBytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [20]), (0..<20).map { _ in Int64(rng.next() % 3) }.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        return (base, data)
    }

    func testTrainDeviceFlag() throws {
        let dir = cliScratch()
        let (base, data) = try problem(dir)
        let train = ["train", "--base", base, "--data", data, "--rank", "2", "--method", "dora", "--no-progress"]

        // auto: runs on the CPU and says so, on one stderr line that is not a warning.
        let auto = try run(train)
        XCTAssertEqual(auto.status, 0, auto.stderr)
        if !cudaPluginBuilt {
            XCTAssertTrue(auto.stdout.contains(" on cpu (cpu-openblas)"), auto.stdout)
            let lines = auto.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, auto.stderr)
            XCTAssertTrue(lines[0].hasPrefix("opconvert: using cpu (cuda: "), auto.stderr)
            XCTAssertFalse(auto.stderr.contains("warning"), auto.stderr)
        }
        let json = try run(train + ["--json"])
        XCTAssertEqual(json.status, 0, json.stderr)
        if !cudaPluginBuilt { XCTAssertEqual(try object(json.stdout)["device"] as? String, "cpu") }
        XCTAssertFalse(json.stderr.contains("using"), json.stderr)

        // cpu: no note; --tf32 is accepted and does nothing there.
        let cpu = try run(train + ["--device", "cpu", "--tf32"])
        XCTAssertEqual(cpu.status, 0, cpu.stderr)
        XCTAssertEqual(cpu.stderr, "")
        if !cudaPluginBuilt {
            let timeless = { (s: String) in s.replacingOccurrences(of: #"\d+\.\d+ s/epoch"#, with: "", options: .regularExpression) }
            XCTAssertEqual(timeless(cpu.stdout), timeless(auto.stdout), "the same run on the same device")
        }

        // cuda without a CUDA plugin or GPU: exit 69, one line naming what is missing.
        if !cudaPluginBuilt {
            for device in ["cuda", "cuda:1"] {
                let r = try run(train + ["--device", device])
                XCTAssertEqual(r.status, 69, r.stderr)
                XCTAssertTrue(r.stderr.hasPrefix("opconvert: error: --device \(device): "), r.stderr)
                XCTAssertTrue(r.stderr.contains(KernelPlugin.cudaLibraryName), r.stderr)
                XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
                XCTAssertEqual(r.stdout, "")
            }
            let f = try run(["train", "factorize", "--random", "6x5", "--rank", "2", "--steps", "3", "--device", "cuda"])
            XCTAssertEqual(f.status, 69, f.stderr)
        }
        // --plugin PATH with a device index the plugin lacks.
        let idx = try run(train + ["--plugin", cpuPluginPath, "--device", "cuda:1"])
        XCTAssertEqual(idx.status, 69, idx.stderr)
        XCTAssertTrue(idx.stderr.contains("no device 1"), idx.stderr)
        let withPlugin = try run(train + ["--plugin", cpuPluginPath, "--json"])
        XCTAssertEqual(withPlugin.status, 0, withPlugin.stderr)
        XCTAssertTrue((try object(withPlugin.stdout)["device"] as? String ?? "").hasPrefix("cpu-openblas:0 (CPU (OpenBLAS"), withPlugin.stdout)

        // Bad values are usage errors naming the value.
        for (args, value) in [(train + ["--device", "gpu"], "gpu"), (["train", "factorize", "--device", "cuda:-2"], "cuda:-2"),
                              (["plugin", "check", "--device", "tpu"], "tpu"), (["plugin", "bench", "--device", "cuda:x"], "cuda:x")] {
            let r = try run(args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("\"\(value)\""), r.stderr)
        }
        let f = try run(["train", "factorize", "--random", "6x5", "--rank", "2", "--steps", "3", "--device", "cpu", "--json"])
        XCTAssertEqual(f.status, 0, f.stderr)
        XCTAssertEqual(try object(f.stdout)["device"] as? String, "cpu")
    }
}

private extension Array where Element == Float {
    var pluginTestBytes: [UInt8] { withUnsafeBytes { [UInt8]($0) } }
}
