import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// Problems loading a kernel plugin or running one of its kernels.
public enum PluginError: CategorizedError, Sendable {
    /// The plugin file does not exist (an explicit `--plugin PATH`).
    case notFound(path: String)
    /// No plugin path was given and the default CPU plugin is in none of the searched directories.
    case defaultNotFound(library: String, searched: [String])
    /// dlopen refused the file (not a shared library, wrong architecture, missing dependency, ...).
    case loadFailed(path: String, reason: String)
    /// The library does not export the entry symbol.
    case missingSymbol(path: String, symbol: String)
    /// The entry returned NULL (`found` is nil) or a table of another ABI version.
    case abiMismatch(path: String, expected: UInt32, found: UInt32?)
    /// The table is malformed (struct_size too small, ...).
    case invalidTable(path: String, reason: String)
    /// The table lacks a function (NULL pointer).
    case incomplete(path: String, function: String)
    /// A kernel returned an error code; `message` is the plugin's last_error text.
    case kernelFailed(function: String, code: Int, message: String)
    /// The host refused a call before it reached the plugin (buffer too small, size out of range, ...).
    case invalidArgument(function: String, reason: String)
    /// create_with_options failed; `reason` is the plugin's why text.
    case contextFailed(plugin: String, code: Int, reason: String)
    /// A device index the plugin does not have (`count` when known).
    case noSuchDevice(plugin: String, device: Int, count: Int?)
    /// A v2 function called on a plugin that serves only ABI version 1.
    case pluginTooOld(plugin: String, function: String)
    /// A transformer (ABI v3) kernel called on a plugin that serves an older version.
    case transformerKernelsMissing(plugin: String, abiVersion: UInt32)
    /// `--device` names a device this machine cannot use; `reason` says why (the probe's
    /// text, or the plugin file that is missing and where it was looked for).
    case deviceUnavailable(device: String, reason: String)
    /// A `--device` value that is not auto, cpu, cuda or cuda:N.
    case invalidDevice(String)
    /// `plugin check` found failing cases.
    case conformanceFailed(plugin: String, failed: Int, total: Int)

    public var category: ErrorCategory {
        switch self {
        case .notFound, .defaultNotFound: return .missingInput
        case .abiMismatch, .invalidTable, .incomplete, .missingSymbol: return .unsupported
        case .loadFailed: return .malformedInput
        case .kernelFailed, .invalidArgument, .conformanceFailed: return .internal
        case .deviceUnavailable, .pluginTooOld, .noSuchDevice, .transformerKernelsMissing: return .unsupported
        case let .contextFailed(_, code, _): return code == -3 || code == -4 ? .unsupported : .internal
        case .invalidDevice: return .usage
        }
    }

    public var description: String {
        switch self {
        case let .notFound(p):
            return "\(p): kernel plugin not found"
        case let .defaultNotFound(lib, dirs):
            let list = dirs.isEmpty ? "(no candidate directory)" : dirs.joined(separator: ", ")
            return "default kernel plugin \(lib) not found; looked in \(list) (\(KernelPlugin.searchOrderDescription)). Build it (swift build) or pass --plugin PATH"
        case let .loadFailed(p, reason):
            return "\(p): cannot load kernel plugin: \(reason)"
        case let .missingSymbol(p, s):
            return "\(p): not an opconvert kernel plugin: it does not export \(s)"
        case let .abiMismatch(p, expected, found):
            let spoken = KernelPlugin.supportedVersions.map(String.init).joined(separator: " or ")
            if let found {
                return "\(p): kernel plugin ABI version \(found), opconvert needs version \(spoken)"
            }
            return "\(p): kernel plugin does not offer ABI version \(spoken) (its entry returned NULL)"
        case let .invalidTable(p, reason):
            return "\(p): invalid kernel plugin table: \(reason)"
        case let .incomplete(p, f):
            return "\(p): kernel plugin is incomplete: function \(f) is NULL"
        case let .kernelFailed(f, code, message):
            return "kernel \(f) failed (\(Self.codeName(code)))" + (message.isEmpty ? "" : ": \(message)")
        case let .invalidArgument(f, reason):
            return "kernel \(f): \(reason)"
        case let .contextFailed(plugin, code, reason):
            return "cannot create a context of plugin \(plugin) (\(Self.codeName(code)))" + (reason.isEmpty ? "" : ": \(reason)")
        case let .noSuchDevice(plugin, device, count):
            return "plugin \(plugin) has no device \(device)" + (count.map { " (it has \($0))" } ?? "")
        case let .pluginTooOld(plugin, f):
            return "plugin \(plugin) serves ABI version 1, which has no \(f)"
        case let .transformerKernelsMissing(plugin, version):
            return "plugin \(plugin) (ABI v\(version)) lacks the transformer kernels (needs v3)"
        case let .deviceUnavailable(device, reason):
            return "--device \(device): \(reason)"
        case let .invalidDevice(value):
            return "--device: \"\(value)\" is not auto, cpu, cuda or cuda:N"
        case let .conformanceFailed(plugin, failed, total):
            return "plugin check failed: \(failed) of \(total) cases failed on plugin \(plugin)"
        }
    }

    /// The OPC_E* name of a plugin return code.
    public static func codeName(_ code: Int) -> String {
        switch code {
        case 0: return "OPC_OK"
        case -1: return "OPC_E_INVALID"
        case -2: return "OPC_E_NOMEM"
        case -3: return "OPC_E_DEVICE"
        case -4: return "OPC_E_UNSUPPORTED"
        default: return "error \(code)"
        }
    }
}
