import COpConvertPluginABI
import Foundation
import XCTest
@testable import OpConvertKit

/// ABI version 2 on the host: loading v2 then v1, the discovery calls, --device selection,
/// and DoRA with quotients on the device (v2) or on the host (v1).
final class PluginABIv2Tests: XCTestCase {
    func cpuPlugin() throws -> KernelPlugin { try KernelPlugin.load(path: nil) }

    /// The CPU plugin as a version-1 host sees it (uncached: a separate KernelPlugin).
    func cpuPluginAsV1() throws -> KernelPlugin { try KernelPlugin.open(try cpuPlugin().path, versions: [1]) }

    func testTableSizesMatchTheHeader() {
        XCTAssertEqual(KernelPlugin.v3TableSize, MemoryLayout<opc_plugin>.size)
        XCTAssertEqual(KernelPlugin.v1TableSize, MemoryLayout<opc_plugin>.offset(of: \opc_plugin.probe))
        XCTAssertEqual(KernelPlugin.v2TableSize - KernelPlugin.v1TableSize, 6 * MemoryLayout<UnsafeRawPointer>.size, "six v2 members")
        XCTAssertEqual(KernelPlugin.v3TableSize - KernelPlugin.v2TableSize, 10 * MemoryLayout<UnsafeRawPointer>.size, "ten v3 members")
    }

    func testCPUPluginServesVersion2WithDiscovery() throws {
        let p = try cpuPlugin()
        XCTAssertEqual(p.abiVersion, 3)  // v3 now; the v2 members are checked below
        XCTAssertEqual(p.probe(), PluginProbe(ok: true, deviceCount: 1, reason: ""))
        let info = try p.deviceInfo(0)
        XCTAssertTrue(info.name.hasPrefix("CPU (OpenBLAS"), info.name)
        XCTAssertTrue(info.name.contains("thread"), info.name)
        XCTAssertGreaterThanOrEqual(info.multiprocessors, 1)
        XCTAssertGreaterThan(info.totalMemoryBytes, 1 << 20)
        XCTAssertNil(info.computeCapability)
        XCTAssertThrowsError(try p.deviceInfo(1)) { XCTAssertTrue("\($0)".contains("one device"), "\($0)") }
        let compiled = p.compileKernels(target: "sm_80")
        XCTAssertTrue(compiled.unsupported)
        XCTAssertTrue(compiled.log.contains("compiles nothing"), compiled.log)
        // create_with_options: device 0 works, device 1 is refused with the plugin's why.
        let ctx = try p.makeContext(device: 0, threads: 1, allowTF32: true, cacheDirectory: "")
        XCTAssertTrue(ctx.hasElementwiseV2)
        XCTAssertThrowsError(try p.makeContext(device: 1)) { error in
            guard case PluginError.contextFailed(_, let code, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(code, OPC_E_INVALID)
            XCTAssertTrue(reason.contains("one device"), reason)
        }
    }

    func testDivideAndMultiplyKernels() throws {
        let ctx = try cpuPlugin().makeContext()
        let a = try ctx.alloc(count: 5), b = try ctx.alloc(count: 5), out = try ctx.alloc(count: 5)
        try ctx.upload([1, -2, 3, 0, 7], to: a)
        try ctx.upload([2, 4, -8, 5, 0.5], to: b)
        try ctx.divide(a, by: b, into: out)
        XCTAssertEqual(try ctx.download(out), [0.5, -0.5, -0.375, 0, 14])
        try ctx.multiply(a, by: b, into: a)  // out may be a
        XCTAssertEqual(try ctx.download(a), [2, -8, -24, 0, 3.5])
        XCTAssertThrowsError(try ctx.divide(a, by: try ctx.alloc(count: 4), into: out)) { error in
            guard case PluginError.invalidArgument = error else { return XCTFail("\(error)") }
        }
    }

    func testVersion1HostViewOfTheCPUPlugin() throws {
        let v1 = try cpuPluginAsV1()
        XCTAssertEqual(v1.abiVersion, 1)
        XCTAssertNil(v1.table.probe)
        XCTAssertNil(v1.table.divide, "members past a v1 struct_size are never read")
        XCTAssertEqual(v1.probe(), PluginProbe(ok: true, deviceCount: 1, reason: "plugin predates probe"))
        XCTAssertTrue(v1.compileKernels(target: "sm_90").unsupported)
        XCTAssertThrowsError(try v1.makeContext(device: 1)) { XCTAssertEqual(ExitStatus.of($0), .unsupported) }
        let ctx = try v1.makeContext()
        XCTAssertFalse(ctx.hasElementwiseV2)
        let a = try ctx.alloc(count: 2)
        XCTAssertThrowsError(try ctx.divide(a, by: a, into: a)) { error in
            guard case PluginError.pluginTooOld(_, "divide") = error else { return XCTFail("\(error)") }
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
        }
        // The whole suite on the v1 view: v1 members only, and a note saying so.
        let report = PluginConformance(plugin: v1).run()
        XCTAssertEqual(report.failed, 0, report.cases.filter { !$0.ok }.map(\.line).joined(separator: "\n"))
        XCTAssertFalse(report.cases.contains { $0.name.hasPrefix("divide") || $0.name.hasPrefix("probe") })
        XCTAssertTrue(report.notes.contains { $0.contains("ABI version 1") }, "\(report.notes)")
    }

    /// Fake plugins built with cc: v1-only tables load; malformed v2 tables are refused.
    func testVersionNegotiationWithFakePlugins() throws {
        let cc = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let cc else { throw XCTSkip("no C compiler (cc) available") }
        let dir = TestPaths.scratch(self)
        let source = dir + "/fake.c"
        try """
        #include "opc_plugin.h"
        #include <stddef.h>
        static int dummy(void) { return -4; }
        static opc_plugin t;
        __attribute__((visibility("default")))
        const opc_plugin *opc_plugin_entry(uint32_t v) {
            if (!(ACCEPT)) return NULL;
            t.abi_version = v; t.struct_size = SIZE; t.name = "fake"; t.description = "test";
            int (**f)(void) = (int (**)(void))(void *)&t.create;
            size_t n = (sizeof t - offsetof(opc_plugin, create)) / sizeof *f;
            for (size_t i = 0; i < n; i++) f[i] = dummy;
            NULLIFY
            return &t;
        }
        """.write(toFile: source, atomically: true, encoding: .utf8)
        let include = TestPaths.repoRoot + "/Sources/COpConvertPluginABI/include"
        func build(_ name: String, accept: String, size: String, nullify: String = "") throws -> String {
            let out = dir + "/\(name).so"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: cc)
            p.arguments = ["-shared", "-fPIC", "-O0", "-I", include, "-DACCEPT=\(accept)", "-DSIZE=\(size)", "-DNULLIFY=\(nullify)", "-o", out, source]
            try p.run()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "cc \(name)")
            return out
        }
        let v1Only = try build("v1_only", accept: "v == 1", size: "OPC_PLUGIN_V1_SIZE")
        let v1Short = try build("v1_short", accept: "v == 1", size: "(OPC_PLUGIN_V1_SIZE - 8)")
        let v2Short = try build("v2_short", accept: "v <= 2", size: "OPC_PLUGIN_V1_SIZE")
        let v1Long = try build("v1_long", accept: "v == 1", size: "OPC_PLUGIN_V2_SIZE")  // v2 slots set, but it serves v1
        let v2NoDivide = try build("v2_nodivide", accept: "v <= 2", size: "OPC_PLUGIN_V2_SIZE", nullify: "if (v == 2) t.divide = 0;")

        let plugin = try KernelPlugin.load(path: v1Only)
        XCTAssertEqual(plugin.abiVersion, 1)
        XCTAssertEqual(plugin.probe().reason, "plugin predates probe")
        XCTAssertEqual(try plugin.deviceInfo(0).index, 0)
        let long = try KernelPlugin.load(path: v1Long)
        XCTAssertEqual(long.abiVersion, 1)
        XCTAssertNil(long.table.divide, "members of a later version than the one served are not taken")
        XCTAssertThrowsError(try KernelPlugin.load(path: v1Short)) { error in
            guard case PluginError.invalidTable(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("version 1"), reason)
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: v2Short)) { error in
            guard case PluginError.invalidTable(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("version 2 needs at least \(KernelPlugin.v2TableSize)"), reason)
        }
        XCTAssertThrowsError(try KernelPlugin.load(path: v2NoDivide)) { error in
            guard case PluginError.incomplete(_, "divide") = error else { return XCTFail("\(error)") }
        }
    }

    // MARK: - --device

    func testDeviceChoiceParsing() throws {
        XCTAssertEqual(try DeviceChoice(parsing: "auto"), .auto)
        XCTAssertEqual(try DeviceChoice(parsing: "cpu"), .cpu)
        XCTAssertEqual(try DeviceChoice(parsing: "cuda"), .cuda(nil))
        XCTAssertEqual(try DeviceChoice(parsing: "cuda:3"), .cuda(3))
        XCTAssertEqual(try DeviceChoice(parsing: "cuda:3").index, 3)
        XCTAssertEqual(DeviceChoice.cuda(nil).description, "cuda")
        for bad in ["", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cpu:0", " cpu"] {
            XCTAssertThrowsError(try DeviceChoice(parsing: bad), bad) { error in
                XCTAssertEqual(ExitStatus.of(error), .usage, bad)
                XCTAssertTrue("\(error)".contains("\"\(bad)\""), "\(error)")
            }
        }
    }

    func testDeviceSelectionWithoutACUDAPlugin() throws {
        try XCTSkipIf(KernelPlugin.find(library: KernelPlugin.cudaLibraryName) != nil, "a CUDA plugin is built here")
        let cpu = try DeviceSelection.select(.cpu, pluginPath: nil)
        XCTAssertEqual(cpu.label, "cpu")
        XCTAssertNil(cpu.announcement)
        XCTAssertEqual(cpu.plugin.name, "cpu-openblas")
        for choice in [DeviceChoice.cuda(nil), .cuda(1)] {
            XCTAssertThrowsError(try DeviceSelection.select(choice, pluginPath: nil)) { error in
                XCTAssertEqual(ExitStatus.of(error), .unsupported)
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix("--device \(choice): "), text)
                XCTAssertTrue(text.contains(KernelPlugin.cudaLibraryName) && text.contains("looked in"), text)
                XCTAssertFalse(text.contains("\n"))
            }
        }
        let auto = try DeviceSelection.select(.auto, pluginPath: nil)
        XCTAssertEqual(auto.label, "cpu")
        let line = try XCTUnwrap(auto.announcement)
        XCTAssertTrue(line.hasPrefix("opconvert: using cpu (cuda: "), line)
        XCTAssertFalse(line.contains("warning") || line.contains("\n") || line.contains("looked in"), line)
        // --plugin PATH with a device index it does not have.
        let path = cpu.plugin.path
        XCTAssertEqual(try DeviceSelection.select(.cuda(0), pluginPath: path).label, "cpu-openblas:0 (\(try cpu.plugin.deviceInfo(0).name))")
        XCTAssertThrowsError(try DeviceSelection.select(.cuda(1), pluginPath: path)) { error in
            XCTAssertEqual(ExitStatus.of(error), .unsupported)
            XCTAssertTrue("\(error)".contains("no device 1"), "\(error)")
        }
        XCTAssertEqual(DeviceSelection.shortReason("libcuda.so.1 (the NVIDIA driver) not found; tried: /a, /b"),
                       "libcuda.so.1 (the NVIDIA driver) not found")
        XCTAssertEqual(DeviceSelection.shortReason(String(repeating: "x", count: 300)).count, 100)
    }

    /// The CUDA plugin built (as SwiftPM does everywhere) on a machine without the NVIDIA
    /// driver: --device cuda is "unsupported" with the probe's reason, auto falls back to cpu.
    func testDeviceSelectionWithTheCUDAPluginButNoDriver() throws {
        let cudaPath = try XCTUnwrap(KernelPlugin.find(library: KernelPlugin.cudaLibraryName), "SwiftPM builds the CUDA plugin")
        let cuda = try KernelPlugin.load(path: cudaPath)
        XCTAssertEqual(cuda.name, "cuda")
        XCTAssertEqual(cuda.abiVersion, 3)  // the CUDA plugin serves v3 (issue 12)
        let probe = cuda.probe()
        try XCTSkipIf(probe.ok, "this machine has a usable CUDA driver")
        XCTAssertTrue(probe.reason.contains("libcuda.so.1") || probe.reason.contains("CUDA"), probe.reason)
        for choice in [DeviceChoice.cuda(nil), .cuda(0), .cuda(2)] {
            XCTAssertThrowsError(try DeviceSelection.select(choice, pluginPath: nil)) { error in
                XCTAssertEqual(ExitStatus.of(error), .unsupported)
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix("--device \(choice): no usable CUDA device: "), text)
                XCTAssertTrue(text.contains(probe.reason), text)
                XCTAssertFalse(text.contains("\n"), text)
            }
        }
        let auto = try DeviceSelection.select(.auto, pluginPath: nil)
        XCTAssertEqual(auto.label, "cpu")
        XCTAssertEqual(auto.plugin.name, "cpu-openblas")
        let line = try XCTUnwrap(auto.announcement)
        XCTAssertTrue(line.hasPrefix("opconvert: using cpu (cuda: ") && line.hasSuffix("\(DeviceSelection.shortReason(probe.reason)))"), line)
        XCTAssertFalse(line.contains("tried") || line.contains("\n"), line)
    }

    // MARK: - DoRA on the device

    /// A 10 -> 8 -> 5 ReLU network and 48 labelled rows.
    func makeProblem(_ dir: String) throws -> (base: String, data: String) {
        var rng = SeededRandom(seed: 5)
        let dims = [10, 8, 5]
        var tensors: [(TensorSpec, [UInt8])] = []
        for l in 0..<2 {
            let w = (0..<(dims[l + 1] * dims[l])).map { _ in rng.normal() * 0.5 }
            let b = (0..<dims[l + 1]).map { _ in rng.normal() * 0.1 }
            tensors.append((TensorSpec(name: "layers.\(l).weight", dtype: .f32, shape: [dims[l + 1], dims[l]]), w.bytes))
            tensors.append((TensorSpec(name: "layers.\(l).bias", dtype: .f32, shape: [dims[l + 1]]), b.bytes))
        }
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        try SafetensorsWriter.write(path: base, tensors: tensors, metadata: nil)
        let n = 48
        try SafetensorsWriter.write(path: data, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [n, 10]), (0..<(n * 10)).map { _ in rng.normal() }.bytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [n]), (0..<n).map { _ in Int64(rng.next() % 5) }.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        return (base, data)
    }

    /// DoRA's quotients formed by the v2 kernels give the same bits as the v1 host path.
    func testDoRAOnTheDeviceMatchesTheHostPathBitForBit() throws {
        let dir = TestPaths.scratch(self)
        let (base, data) = try makeProblem(dir)
        let v2 = try DeviceSelection.select(.cpu, pluginPath: nil)
        let v1Plugin = try cpuPluginAsV1()
        let v1 = SelectedDevice(plugin: v1Plugin, device: 0, label: "cpu", announcement: nil)
        for method in [AdapterMethod.dora, .opDora] {
            var o = TrainOptions(base: base, data: data)
            o.method = method
            o.rank = 2
            o.mlpHidden = 4
            o.zDim = 4
            o.lr = 2e-2
            o.epochs = 3
            o.batchSize = 16
            o.threads = 1
            var results: [(Double, [[Float]])] = []
            for device in [v2, v1] {
                let trainer = try Trainer(options: o, device: device)
                XCTAssertEqual(trainer.ctx.hasElementwiseV2, device.plugin.abiVersion >= 2)
                let summary = try trainer.run()
                let params = try trainer.adapters.flatMap { a in try a.parameters.map { try trainer.ctx.download($0.value) } }
                results.append((summary.finalLoss, params))
                XCTAssertEqual(summary.device, "cpu")
            }
            XCTAssertEqual(results[0].0, results[1].0, method.rawValue)
            XCTAssertEqual(results[0].1, results[1].1, "\(method.rawValue): parameters differ between the device and host paths")
            XCTAssertTrue(results[0].0.isFinite, method.rawValue)
        }
    }
}
