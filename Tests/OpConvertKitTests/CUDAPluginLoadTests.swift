import COpConvertPluginABI
import Foundation
import XCTest
@testable import OpConvertKit

/// The CUDA plugin on any machine (no GPU, no driver needed): its table, its probe's
/// reasons, NVRTC compilation of every kernel, the embedded source being up to date, and
/// that no call crashes without a context. Calls the C table directly (dlopen + dlsym).
// The ABI's OPC_* codes import as Int; the functions return Int32.
private let okCode = Int32(OPC_OK)
private let invalidCode = Int32(OPC_E_INVALID)
private let unsupportedCode = Int32(OPC_E_UNSUPPORTED)

final class CUDAPluginLoadTests: XCTestCase {
    static let libraryName = "libOpConvertCUDAPlugin.so"

    /// The plugin library, built next to the test bundle like the CPU plugin. Safe to share:
    /// set once by the (thread-safe) lazy initializer, never written again, and dlopen
    /// handles may be used from any thread.
    nonisolated(unsafe) static let loaded: (path: String, handle: UnsafeMutableRawPointer)? = {
        for dir in KernelPlugin.defaultSearchDirectories() {
            let path = dir + "/" + libraryName
            if FileManager.default.fileExists(atPath: path), let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) {
                return (path, h)
            }
        }
        return nil
    }()
    static var handle: UnsafeMutableRawPointer? { loaded?.handle }

    private func entry() throws -> opc_plugin_entry_fn {
        let h = try XCTUnwrap(Self.handle, "\(Self.libraryName) not found in \(KernelPlugin.defaultSearchDirectories())")
        let sym = try XCTUnwrap(dlsym(h, OPC_PLUGIN_ENTRY_SYMBOL), "opc_plugin_entry not exported")
        return unsafeBitCast(sym, to: opc_plugin_entry_fn.self)
    }

    private func table(_ version: UInt32 = OPC_PLUGIN_ABI_VERSION) throws -> opc_plugin {
        try XCTUnwrap(try entry()(version), "no table for host version \(version)").pointee
    }

    /// Whether this process can load the NVIDIA driver at all (then the no-driver checks
    /// do not apply).
    private static let systemHasDriver: Bool = {
        guard let h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL) else { return false }
        dlclose(h)
        return true
    }()

    /// OPC_PLUGIN_V2_SIZE (an offsetof macro, not imported into Swift).
    static let v2Size = MemoryLayout<opc_plugin>.offset(of: \opc_plugin.multiply)! + MemoryLayout<UnsafeRawPointer>.size
    /// OPC_PLUGIN_V3_SIZE.
    static let v3Size = MemoryLayout<opc_plugin>.offset(of: \opc_plugin.token_xent)! + MemoryLayout<UnsafeRawPointer>.size

    /// The NUL-terminated text in a C buffer.
    private func text(_ buffer: [CChar]) -> String {
        buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    private static var skipNVRTC: Bool { ProcessInfo.processInfo.environment["OPCONVERT_SKIP_NVRTC"] == "1" }

    /// scripts/setup.sh pip-installs NVRTC under .build/nvrtc (a --target folder, which the
    /// plugin's python search does not cover): point the plugin at it unless the caller chose
    /// a folder. Process-wide on purpose: the CLI tests' children inherit it.
    override class func setUp() {
        super.setUp()
        guard ProcessInfo.processInfo.environment["OPCONVERT_CUDA_LIBRARY_PATH"] == nil else { return }
        let lib = TestPaths.repoRoot + "/.build/nvrtc/nvidia/cuda_nvrtc/lib"
        if FileManager.default.fileExists(atPath: lib) { setenv("OPCONVERT_CUDA_LIBRARY_PATH", lib, 1) }
    }

    /// Runs body with OPCONVERT_CUDA_LIBRARY_PATH set, restoring the previous value.
    private func withLibraryPath<T>(_ value: String, _ body: () throws -> T) rethrows -> T {
        let old = ProcessInfo.processInfo.environment["OPCONVERT_CUDA_LIBRARY_PATH"]
        setenv("OPCONVERT_CUDA_LIBRARY_PATH", value, 1)
        defer {
            if let old { setenv("OPCONVERT_CUDA_LIBRARY_PATH", old, 1) } else { unsetenv("OPCONVERT_CUDA_LIBRARY_PATH") }
        }
        return try body()
    }

    private func probe(_ t: opc_plugin) -> (rc: Int32, count: Int32, why: String) {
        var count: Int32 = -1
        var why = [CChar](repeating: 0, count: 2048)
        let rc = t.probe!(&count, &why, why.count)
        return (rc, count, text(why))
    }

    private func compile(_ t: opc_plugin, _ target: String?) -> (rc: Int32, log: String) {
        var log = [CChar](repeating: 0, count: 8192)
        let rc: Int32
        if let target { rc = target.withCString { t.compile_kernels!($0, &log, log.count) } }
        else { rc = t.compile_kernels!(nil, &log, log.count) }
        return (rc, text(log))
    }

    // MARK: - Table

    func testServesCompleteTablesForHostVersions1To3Only() throws {
        for version: UInt32 in [1, 2, 3] {
            let t = try table(version)
            XCTAssertEqual(t.abi_version, version)
            XCTAssertGreaterThanOrEqual(Int(t.struct_size), Self.v3Size)
            XCTAssertEqual(String(cString: t.name), "cuda")
            let description = String(cString: t.description)
            XCTAssertTrue(description.contains("cuBLAS") && description.contains("NVRTC"), description)
            let present: [(String, Bool)] = [
                ("create", t.create != nil), ("destroy", t.destroy != nil), ("last_error", t.last_error != nil),
                ("alloc", t.alloc != nil), ("free", t.free != nil), ("upload", t.upload != nil),
                ("download", t.download != nil), ("copy", t.copy != nil), ("fill", t.fill != nil),
                ("gemm", t.gemm != nil), ("axpy", t.axpy != nil), ("scale", t.scale != nil),
                ("relu_forward", t.relu_forward != nil), ("relu_backward", t.relu_backward != nil),
                ("add_row_vector", t.add_row_vector != nil), ("sum_rows", t.sum_rows != nil),
                ("row_norms", t.row_norms != nil), ("scale_rows", t.scale_rows != nil),
                ("row_dots", t.row_dots != nil), ("softmax_xent", t.softmax_xent != nil),
                ("sum_squares", t.sum_squares != nil), ("adamw", t.adamw != nil), ("probe", t.probe != nil),
                ("device_info", t.device_info != nil), ("create_with_options", t.create_with_options != nil),
                ("compile_kernels", t.compile_kernels != nil), ("divide", t.divide != nil),
                ("multiply", t.multiply != nil),
                // v3 (served to older hosts too: they never read past their version's members)
                ("embedding_forward", t.embedding_forward != nil), ("embedding_backward", t.embedding_backward != nil),
                ("rmsnorm_forward", t.rmsnorm_forward != nil), ("rmsnorm_backward", t.rmsnorm_backward != nil),
                ("rope", t.rope != nil), ("attention_forward", t.attention_forward != nil),
                ("attention_backward", t.attention_backward != nil), ("silu_gate_forward", t.silu_gate_forward != nil),
                ("silu_gate_backward", t.silu_gate_backward != nil), ("token_xent", t.token_xent != nil),
            ]
            for (name, ok) in present { XCTAssertTrue(ok, "v\(version) table: \(name) is NULL") }
        }
        let e = try entry()
        XCTAssertNil(e(0))
        XCTAssertNil(e(4))
        XCTAssertNil(e(UInt32.max))
    }

    func testExportsOnlyTheEntryPoint() throws {
        let h = try XCTUnwrap(Self.handle)
        XCTAssertNotNil(dlsym(h, "opc_plugin_entry"))
        for hidden in ["opc_load_driver", "opc_load_nvrtc", "opc_compile_kernels", "opc_cache_read",
                         "opc_appendf", "opc_kernel_names", "cuda_probe", "cuda_gemm"] {
            XCTAssertNil(dlsym(h, hidden), "\(hidden) is exported")
        }
    }

    // MARK: - Probe without a driver

    func testProbeWithoutDriverNamesLibcuda() throws {
        let t = try table()
        let result = probe(t)
        if Self.systemHasDriver {
            // A GPU machine: either usable, or failing for a reason it states.
            if result.rc == okCode { XCTAssertGreaterThanOrEqual(result.count, 1) }
            else { XCTAssertFalse(result.why.isEmpty) }
            throw XCTSkip("this machine has an NVIDIA driver; probe: \(result.rc) \(result.why)")
        }
        XCTAssertEqual(result.rc, unsupportedCode, result.why)
        XCTAssertEqual(result.count, 0)
        XCTAssertTrue(result.why.contains("libcuda.so.1"), result.why)
        XCTAssertTrue(result.why.contains("tried:"), result.why)
        XCTAssertFalse(result.why.contains("\n"), "one line: \(result.why)")
        // NULL outputs are allowed.
        XCTAssertEqual(t.probe!(nil, nil, 0), unsupportedCode)
        // A short buffer is truncated, still NUL-terminated.
        var small = [CChar](repeating: 0x55, count: 8)
        _ = t.probe!(nil, &small, small.count)
        XCTAssertEqual(small[7], 0)
        XCTAssertEqual(text(small).count, 7)
    }

    func testFakeDriverOnTheLibraryPathIsReportedWithItsPath() throws {
        let t = try table()
        let dir = TestPaths.scratch(self)
        let fake = dir + "/libcuda.so.1"
        try "not a shared library\n".write(toFile: fake, atomically: true, encoding: .utf8)
        let result = withLibraryPath("/nonexistent-opconvert-dir:" + dir) { probe(t) }
        if Self.systemHasDriver {
            // The fake is skipped and the real driver found after it (whatever else is missing).
            XCTAssertFalse(result.why.hasPrefix("libcuda.so.1"), result.why)
            return
        }
        XCTAssertEqual(result.rc, unsupportedCode, result.why)
        XCTAssertTrue(result.why.contains(fake), result.why)
        XCTAssertTrue(result.why.contains("could not be loaded"), result.why)
        XCTAssertTrue(result.why.contains(dir), "the folder is listed as tried: \(result.why)")
        // Without the fake the reason is "not found" again: failures are not cached.
        let again = probe(t)
        XCTAssertFalse(again.why.contains(fake), again.why)
    }

    func testDeviceInfoWithoutDriverFails() throws {
        if Self.systemHasDriver { throw XCTSkip("this machine has an NVIDIA driver") }
        let t = try table()
        var info = opc_device_info()
        info.struct_size = UInt32(MemoryLayout<opc_device_info>.size)
        var why = [CChar](repeating: 0, count: 1024)
        XCTAssertEqual(t.device_info!(0, &info, &why, why.count), unsupportedCode)
        XCTAssertTrue(text(why).contains("libcuda.so.1"))
        XCTAssertEqual(t.device_info!(0, nil, &why, why.count), invalidCode)
    }

    // MARK: - Contexts without a driver

    func testCreateWithoutDriverFailsWithNullContext() throws {
        let t = try table()
        var why = [CChar](repeating: 0, count: 2048)
        // A bad device index is refused before any library is needed.
        var options = opc_create_options()
        options.struct_size = UInt32(MemoryLayout<opc_create_options>.size)
        options.device = -1
        var ctx = OpaquePointer(bitPattern: 1)
        XCTAssertEqual(t.create_with_options!(&options, &ctx, &why, why.count), invalidCode)
        XCTAssertNil(ctx)
        XCTAssertTrue(text(why).contains("-1"), text(why))
        XCTAssertEqual(t.create_with_options!(nil, nil, &why, why.count), invalidCode)
        XCTAssertEqual(t.create!(nil, 0), invalidCode)

        if Self.systemHasDriver { throw XCTSkip("this machine has an NVIDIA driver") }
        ctx = OpaquePointer(bitPattern: 1)
        let rc = t.create_with_options!(nil, &ctx, &why, why.count)
        XCTAssertEqual(rc, unsupportedCode)
        XCTAssertNil(ctx)
        XCTAssertTrue(text(why).contains("libcuda.so.1"), text(why))
        ctx = OpaquePointer(bitPattern: 1)
        XCTAssertEqual(t.create!(&ctx, 4), unsupportedCode)
        XCTAssertNil(ctx)
        ctx = OpaquePointer(bitPattern: 1)
        XCTAssertNotEqual(t.create_with_options!(nil, &ctx, nil, 0), okCode)  // no why buffer: still no crash
        XCTAssertNil(ctx)
    }

    func testEveryContextCallWithNullContextIsInvalid() throws {
        for version: UInt32 in [1, 2, 3] {
            let t = try table(version)
            let p = UnsafeMutableRawPointer(bitPattern: 0x1000)
            var host = [Float](repeating: 0, count: 4)
            var out: opc_dev_ptr? = nil
            var loss: Float = 0
            var correct: Int64 = 0
            var sum: Double = 0
            let invalid = invalidCode
            XCTAssertEqual(t.alloc!(nil, 16, &out), invalid)
            XCTAssertNil(out)
            XCTAssertEqual(t.free!(nil, p), invalid)
            XCTAssertEqual(t.upload!(nil, p, &host, 16), invalid)
            XCTAssertEqual(t.download!(nil, &host, p, 16), invalid)
            XCTAssertEqual(t.copy!(nil, p, p, 16), invalid)
            XCTAssertEqual(t.fill!(nil, p, 1, 4), invalid)
            XCTAssertEqual(t.gemm!(nil, 0, 0, 2, 2, 2, 1, p, 2, p, 2, 0, p, 2), invalid)
            XCTAssertEqual(t.axpy!(nil, 4, 1, p, p), invalid)
            XCTAssertEqual(t.scale!(nil, 4, 1, p), invalid)
            XCTAssertEqual(t.relu_forward!(nil, 4, p, p), invalid)
            XCTAssertEqual(t.relu_backward!(nil, 4, p, p, p), invalid)
            XCTAssertEqual(t.add_row_vector!(nil, 2, 2, p, p), invalid)
            XCTAssertEqual(t.sum_rows!(nil, 2, 2, p, 0, p), invalid)
            XCTAssertEqual(t.row_norms!(nil, 2, 2, p, p), invalid)
            XCTAssertEqual(t.scale_rows!(nil, 2, 2, p, p), invalid)
            XCTAssertEqual(t.row_dots!(nil, 2, 2, p, p, p), invalid)
            XCTAssertEqual(t.softmax_xent!(nil, 2, 2, p, p, p, &loss, &correct), invalid)
            XCTAssertEqual(t.sum_squares!(nil, 4, p, &sum), invalid)
            XCTAssertEqual(t.adamw!(nil, 4, p, p, p, p, 0.1, 0.9, 0.999, 1e-8, 0, 1), invalid)
            XCTAssertEqual(t.divide!(nil, 4, p, p, p), invalid)
            XCTAssertEqual(t.multiply!(nil, 4, p, p, p), invalid)
            var lossSum: Double = 0
            XCTAssertEqual(t.embedding_forward!(nil, 2, 4, 4, p, p, p), invalid)
            XCTAssertEqual(t.embedding_backward!(nil, 2, 4, 4, p, p, p), invalid)
            XCTAssertEqual(t.rmsnorm_forward!(nil, 2, 4, 1e-5, p, p, p, p), invalid)
            XCTAssertEqual(t.rmsnorm_backward!(nil, 2, 4, p, p, p, p, p, p), invalid)
            XCTAssertEqual(t.rope!(nil, 2, 1, 4, p, p, 4, p, p, 0), invalid)
            XCTAssertEqual(t.attention_forward!(nil, 1, 2, 2, 1, 4, 0.5, p, p, p, p, p), invalid)
            XCTAssertEqual(t.attention_backward!(nil, 1, 2, 2, 1, 4, 0.5, p, p, p, p, p, p, p, p), invalid)
            XCTAssertEqual(t.silu_gate_forward!(nil, 4, p, p, p), invalid)
            XCTAssertEqual(t.silu_gate_backward!(nil, 4, p, p, p, p, p), invalid)
            XCTAssertEqual(t.token_xent!(nil, 2, 4, p, p, -100, 1, p, &lossSum, &correct), invalid)
            t.destroy!(nil)
            let message = try XCTUnwrap(t.last_error!(nil), "last_error(NULL) is NULL")
            XCTAssertFalse(String(cString: message).isEmpty)
        }
    }

    // MARK: - NVRTC

    func testCompilesEveryKernelForSm80AndSm90() throws {
        if Self.skipNVRTC { throw XCTSkip("OPCONVERT_SKIP_NVRTC=1") }
        let t = try table()
        for target in ["sm_80", "sm_90"] {
            let result = compile(t, target)
            XCTAssertEqual(result.rc, okCode, "\(target): \(result.log) (set OPCONVERT_SKIP_NVRTC=1 where NVRTC "
                           + "cannot be installed; pip install nvidia-cuda-nvrtc-cu12)")
            guard result.rc == okCode else { continue }
            // "34 kernels, 222 KiB cubin (NVRTC 13.2, sm_80)"
            let pattern = #"^\d+ kernels, \d+ KiB cubin \(NVRTC \d+\.\d+, "# + target + #"\)$"#
            XCTAssertNotNil(result.log.range(of: pattern, options: .regularExpression),
                            "\(target): summary \"\(result.log)\" (a warning is appended when NVRTC warns)")
            let kernels = Int(result.log.prefix { $0.isNumber }) ?? 0
            XCTAssertGreaterThanOrEqual(kernels, 34, result.log)
        }
    }

    func testCompileRejectsBadTargetsWithALog() throws {
        let t = try table()
        for bad in ["bogus", "", "sm_", "sm_90 --fmad=true", "compute_90"] {
            let result = compile(t, bad)
            XCTAssertEqual(result.rc, invalidCode, "\(bad): \(result.log)")
            XCTAssertTrue(result.log.contains("sm_80"), result.log)
        }
        XCTAssertEqual(compile(t, nil).rc, invalidCode)
        XCTAssertEqual(t.compile_kernels!("sm_80x1", nil, 0), invalidCode)  // no log buffer: no crash
        if Self.skipNVRTC { throw XCTSkip("OPCONVERT_SKIP_NVRTC=1") }
        // Well-formed but not an architecture NVRTC knows: its own error, in the log.
        let result = compile(t, "sm_1")
        XCTAssertNotEqual(result.rc, okCode)
        XCTAssertTrue(result.log.contains("NVRTC") && result.log.contains("sm_1"), result.log)
    }

    // MARK: - Host code on the CPU emulator

    /// scripts/cuda-emulator: a CPU libcuda.so.1 / libcublas.so.12 that runs the plugin's real
    /// kernels (NVRTC compiles them for real), so every ABI function, the launch argument
    /// marshalling, the kernel cache and resource release are checked against the CPU plugin.
    func testHostCodeOnTheCPUEmulatorMatchesTheCPUPlugin() throws {
        if Self.skipNVRTC { throw XCTSkip("OPCONVERT_SKIP_NVRTC=1") }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let hasCompilers = ["clang", "clang++"].allSatisfy { tool in
            path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
        }
        if !hasCompilers { throw XCTSkip("clang/clang++ not on PATH") }
        let pluginPath = try XCTUnwrap(Self.loaded?.path, "\(Self.libraryName) not found")
        let buildDir = (pluginPath as NSString).deletingLastPathComponent

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [TestPaths.repoRoot + "/scripts/cuda-emulator/run.sh", buildDir]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let last = text.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertEqual(process.terminationStatus, 0, text)
        XCTAssertNotNil(last.range(of: #"^[1-9]\d* passed, 0 failed$"#, options: .regularExpression), text)
    }

    // MARK: - Embedded source

    func testEmbeddedKernelSourceIsInSyncWithTheCuFile() throws {
        let root = TestPaths.repoRoot
        let script = root + "/scripts/embed-cuda-kernels.sh"
        let committed = root + "/Sources/OpConvertCUDAPlugin/kernels/opc_kernels_source.inc"
        let out = TestPaths.scratch(self) + "/opc_kernels_source.inc"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [script, out]
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        let generated = try String(contentsOfFile: out, encoding: .utf8)
        let current = try String(contentsOfFile: committed, encoding: .utf8)
        XCTAssertTrue(generated == current,
                      "opc_kernels_source.inc is out of date with opc_kernels.cu: run scripts/embed-cuda-kernels.sh")
        // Every kernel the plugin launches is defined in the source (extern "C").
        let source = try String(contentsOfFile: root + "/Sources/OpConvertCUDAPlugin/kernels/opc_kernels.cu",
                                encoding: .utf8)
        let plugin = try String(contentsOfFile: root + "/Sources/OpConvertCUDAPlugin/cuda_kernels_build.c",
                                encoding: .utf8)
        let names = plugin.matches(of: /"(opc_[a-z0-9_]+)"/).map { String($0.1) }
        XCTAssertEqual(names.count, 34, "kernel names in cuda_kernels_build.c: \(names)")
        for name in names {
            XCTAssertTrue(source.contains("extern \"C\" __global__ void \(name)("), "\(name) is not a kernel in the .cu")
        }
    }
}
