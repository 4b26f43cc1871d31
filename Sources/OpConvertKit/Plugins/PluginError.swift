/// Problems loading a kernel plugin or running one of its kernels.
public enum PluginError: ClassifiedError, Sendable {
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

    public var exitStatus: ExitStatus {
        switch self {
        case .notFound, .defaultNotFound: return .noInput
        case .abiMismatch, .invalidTable, .incomplete, .missingSymbol: return .unsupported
        case .loadFailed: return .dataError
        case .kernelFailed, .invalidArgument: return .failure
        }
    }

    public var description: String {
        switch self {
        case let .notFound(p):
            return "\(p): kernel plugin not found"
        case let .defaultNotFound(lib, dirs):
            let list = dirs.isEmpty ? "(no candidate directory)" : dirs.joined(separator: ", ")
            return "default kernel plugin \(lib) not found; looked in \(list). Build it (swift build) or pass --plugin PATH"
        case let .loadFailed(p, reason):
            return "\(p): cannot load kernel plugin: \(reason)"
        case let .missingSymbol(p, s):
            return "\(p): not an opconvert kernel plugin: it does not export \(s)"
        case let .abiMismatch(p, expected, found):
            if let found {
                return "\(p): kernel plugin ABI version \(found), opconvert needs version \(expected)"
            }
            return "\(p): kernel plugin does not offer ABI version \(expected) (its entry returned NULL)"
        case let .invalidTable(p, reason):
            return "\(p): invalid kernel plugin table: \(reason)"
        case let .incomplete(p, f):
            return "\(p): kernel plugin is incomplete: function \(f) is NULL"
        case let .kernelFailed(f, code, message):
            let name: String
            switch code {
            case -1: name = "OPC_E_INVALID"
            case -2: name = "OPC_E_NOMEM"
            case -3: name = "OPC_E_DEVICE"
            case -4: name = "OPC_E_UNSUPPORTED"
            default: name = "error \(code)"
            }
            return "kernel \(f) failed (\(name))" + (message.isEmpty ? "" : ": \(message)")
        case let .invalidArgument(f, reason):
            return "kernel \(f): \(reason)"
        }
    }
}
