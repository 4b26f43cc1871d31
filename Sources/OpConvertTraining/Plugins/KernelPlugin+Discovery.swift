import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI

/// Whether a plugin can run on this machine (opc_plugin.probe).
public struct PluginProbe: Codable, Sendable, Equatable {
    public var ok: Bool
    public var deviceCount: Int
    /// Why not (when !ok), or the plugin's note ("" when none).
    public var reason: String

    public init(ok: Bool, deviceCount: Int, reason: String) {
        self.ok = ok
        self.deviceCount = deviceCount
        self.reason = reason
    }
}

/// One device of a plugin (opc_plugin.device_info).
public struct PluginDeviceInfo: Codable, Sendable, Equatable {
    public var index: Int
    public var name: String
    /// CUDA compute capability ("9.0"); nil on the CPU (0.0).
    public var computeCapability: String?
    /// SMs, or the CPU threads the plugin would use.
    public var multiprocessors: Int
    public var totalMemoryBytes: UInt64
}

/// The outcome of compile_kernels for one target.
public struct KernelCompilation: Sendable {
    public var code: Int
    public var log: String
    public var ok: Bool { code == Int(OPC_OK) }
    public var unsupported: Bool { code == Int(OPC_E_UNSUPPORTED) }
}

extension KernelPlugin {
    /// Room for the `why` / `log` texts the v2 discovery calls write.
    static let messageCapacity = 4096

    /// The plugin's probe; a v1 plugin has none and is taken to run (on one device).
    public func probe() -> PluginProbe {
        guard hasVersion2, let probe = table.probe else {
            return PluginProbe(ok: true, deviceCount: 1, reason: "plugin predates probe")
        }
        var count: Int32 = 0
        let (code, why) = Self.withMessage { probe(&count, $0, $1) }
        return PluginProbe(ok: code == OPC_OK && count >= 1, deviceCount: code == OPC_OK ? max(0, Int(count)) : 0,
                           reason: code == OPC_OK && count < 1 && why.isEmpty ? "probe found no device" : why)
    }

    /// Describes device `index`. A v1 plugin: a placeholder for device 0 (it cannot say more).
    public func deviceInfo(_ index: Int) throws -> PluginDeviceInfo {
        guard hasVersion2, let deviceInfo = table.device_info else {
            guard index == 0 else { throw PluginError.noSuchDevice(plugin: name, device: index, count: 1) }
            return PluginDeviceInfo(index: 0, name: "\(name) (plugin predates device_info)", computeCapability: nil,
                                    multiprocessors: 0, totalMemoryBytes: 0)
        }
        guard let device = Int32(exactly: index), device >= 0 else {
            throw PluginError.noSuchDevice(plugin: name, device: index, count: nil)
        }
        var info = opc_device_info()
        info.struct_size = UInt32(MemoryLayout<opc_device_info>.size)
        let (code, why) = Self.withMessage { deviceInfo(device, &info, $0, $1) }
        guard code == OPC_OK else {
            throw PluginError.kernelFailed(function: "device_info", code: Int(code), message: why)
        }
        let deviceName = withUnsafeBytes(of: info.name) { raw -> String in
            let bytes = raw.prefix { $0 != 0 }  // never past the array, even unterminated
            return String(decoding: bytes, as: UTF8.self)
        }
        let cc = info.compute_major > 0 ? "\(info.compute_major).\(info.compute_minor)" : nil
        return PluginDeviceInfo(index: index, name: deviceName, computeCapability: cc,
                                multiprocessors: Int(info.multiprocessors), totalMemoryBytes: info.total_memory_bytes)
    }

    /// compile_kernels for `target` (e.g. "sm_80"); a v1 plugin reports OPC_E_UNSUPPORTED.
    public func compileKernels(target: String) -> KernelCompilation {
        guard hasVersion2, let compile = table.compile_kernels else {
            return KernelCompilation(code: Int(OPC_E_UNSUPPORTED), log: "plugin predates compile_kernels (ABI version 1)")
        }
        let (code, log) = Self.withMessage { buf, len in target.withCString { compile($0, buf, len) } }
        return KernelCompilation(code: Int(code), log: log)
    }

    /// Calls `body` with a zeroed message buffer and returns its code and the text written
    /// (read up to the first NUL, never past the buffer, which keeps a NUL at its end).
    static func withMessage(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) -> (Int32, String) {
        var buffer = [CChar](repeating: 0, count: messageCapacity + 1)
        let code = buffer.withUnsafeMutableBufferPointer { body($0.baseAddress!, messageCapacity) }
        let text = buffer.withUnsafeBufferPointer { b -> String in
            let bytes = b.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            return String(decoding: bytes, as: UTF8.self)
        }
        return (code, text)
    }
}
