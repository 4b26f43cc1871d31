import COpConvertPluginABI
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A kernel plugin: a shared library implementing the C ABI of `opc_plugin.h`
/// (docs/plugin-abi.md), loaded at run time with dlopen.
///
/// The library is never dlclosed: its table and code must outlive every context and
/// buffer made from it, and a process loads at most a couple of plugins.
public final class KernelPlugin: @unchecked Sendable {
    /// The file the plugin was loaded from (absolute).
    public let path: String
    /// The plugin's short name (e.g. "cpu-openblas").
    public let name: String
    public let description: String

    /// A copy of the plugin's function table; every function pointer is checked non-NULL.
    let table: opc_plugin_v1
    private let handle: UnsafeMutableRawPointer

    /// File name of the default CPU plugin, as SwiftPM names the dynamic library product.
    #if os(macOS)
    public static let defaultLibraryName = "libOpConvertCPUPlugin.dylib"
    #else
    public static let defaultLibraryName = "libOpConvertCPUPlugin.so"
    #endif

    private init(path: String, handle: UnsafeMutableRawPointer, table: opc_plugin_v1) {
        self.path = path
        self.handle = handle
        self.table = table
        self.name = table.name.map { String(cString: $0) } ?? "(unnamed)"
        self.description = table.description.map { String(cString: $0) } ?? ""
    }

    /// Loads the plugin at `path`, or the default CPU plugin next to the running executable
    /// when `path` is nil. Throws `PluginError` for anything wrong with the file; never crashes
    /// on a bad plugin (as long as its entry function itself behaves).
    public static func load(path: String?) throws -> KernelPlugin {
        let file: String
        if let path {
            file = absolutePath(path)
            guard FileManager.default.fileExists(atPath: file) else { throw PluginError.notFound(path: path) }
        } else {
            let dirs = defaultSearchDirectories()
            guard let found = dirs.map({ $0 + "/" + defaultLibraryName })
                .first(where: { FileManager.default.fileExists(atPath: $0) })
            else { throw PluginError.defaultNotFound(library: defaultLibraryName, searched: dirs) }
            file = found
        }
        return try cache.load(file)
    }

    /// The directories searched for the default plugin, in order: the running executable's
    /// directory (/proc/self/exe on Linux, then the same path with symlinks resolved), the
    /// directory of `CommandLine.arguments[0]` (found on PATH when it has no slash; also
    /// symlink-resolved), and the directory holding a loaded `.xctest` bundle (tests).
    public static func defaultSearchDirectories() -> [String] {
        var dirs: [String] = []
        func add(executable: String?) {
            guard let executable, !executable.isEmpty else { return }
            let absolute = absolutePath(executable)
            for p in [absolute, resolvedPath(absolute)] {
                let dir = (p as NSString).deletingLastPathComponent
                if !dir.isEmpty && !dirs.contains(dir) { dirs.append(dir) }
            }
        }
        #if os(Linux)
        add(executable: try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        #endif
        add(executable: Bundle.main.executablePath)
        if let argv0 = CommandLine.arguments.first, !argv0.isEmpty {
            if argv0.contains("/") {
                add(executable: argv0)
            } else if let pathVar = ProcessInfo.processInfo.environment["PATH"] {
                let hit = pathVar.split(separator: ":").map { String($0) + "/" + argv0 }
                    .first { FileManager.default.isExecutableFile(atPath: $0) }
                add(executable: hit)
            }
        }
        // Under XCTest the runner may be a separate executable (macOS xctest, swift-testing
        // helpers); the plugin is built next to the test bundle.
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            add(executable: bundle.bundlePath)  // .build/<config>/X.xctest -> .build/<config>
        }
        return dirs
    }

    /// Makes a context (plugin state: threads, handles, streams). `threads <= 0`: plugin default.
    public func makeContext(threads: Int = 0) throws -> KernelContext {
        try KernelContext(plugin: self, threads: threads)
    }

    // MARK: - Loading

    /// One KernelPlugin per file, so that repeated loads share the table and the handle.
    private static let cache = PluginCache()

    private final class PluginCache: @unchecked Sendable {
        private let lock = NSLock()
        private var plugins: [String: KernelPlugin] = [:]

        func load(_ file: String) throws -> KernelPlugin {
            lock.lock()
            defer { lock.unlock() }
            let key = KernelPlugin.resolvedPath(file)
            if let p = plugins[key] { return p }
            let p = try KernelPlugin.open(file)
            plugins[key] = p
            return p
        }
    }

    private static func open(_ file: String) throws -> KernelPlugin {
        _ = dlerror()  // clear any stale error
        guard let handle = dlopen(file, RTLD_NOW | RTLD_LOCAL) else {
            throw PluginError.loadFailed(path: file, reason: lastDlerror() ?? "dlopen failed")
        }
        // From here on a failure leaves the library loaded: dlclose of a library whose
        // initializers ran is not always safe, and a failed load ends the command anyway.
        _ = dlerror()
        guard let sym = dlsym(handle, OPC_PLUGIN_ENTRY_SYMBOL) else {
            throw PluginError.missingSymbol(path: file, symbol: OPC_PLUGIN_ENTRY_SYMBOL)
        }
        let entry = unsafeBitCast(sym, to: opc_plugin_entry_fn.self)
        guard let tablePtr = entry(OPC_PLUGIN_ABI_VERSION) else {
            throw PluginError.abiMismatch(path: file, expected: OPC_PLUGIN_ABI_VERSION, found: nil)
        }
        // Read the two header fields first: an older/other table may be shorter than ours.
        let raw = UnsafeRawPointer(tablePtr)
        let version = raw.loadUnaligned(as: UInt32.self)
        guard version == OPC_PLUGIN_ABI_VERSION else {
            throw PluginError.abiMismatch(path: file, expected: OPC_PLUGIN_ABI_VERSION, found: version)
        }
        let size = raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        let needed = MemoryLayout<opc_plugin_v1>.size
        guard Int(size) >= needed else {
            throw PluginError.invalidTable(path: file,
                                           reason: "struct_size is \(size) bytes, ABI version 1 needs at least \(needed)")
        }
        let table = tablePtr.pointee
        if let missing = missingFunction(table) {
            throw PluginError.incomplete(path: file, function: missing)
        }
        return KernelPlugin(path: file, handle: handle, table: table)
    }

    /// The first NULL function pointer of the table, in declaration order.
    static func missingFunction(_ t: opc_plugin_v1) -> String? {
        let present: [(String, Bool)] = [
            ("create", t.create != nil), ("destroy", t.destroy != nil), ("last_error", t.last_error != nil),
            ("alloc", t.alloc != nil), ("free", t.free != nil), ("upload", t.upload != nil),
            ("download", t.download != nil), ("copy", t.copy != nil), ("fill", t.fill != nil),
            ("gemm", t.gemm != nil), ("axpy", t.axpy != nil), ("scale", t.scale != nil),
            ("relu_forward", t.relu_forward != nil), ("relu_backward", t.relu_backward != nil),
            ("add_row_vector", t.add_row_vector != nil), ("sum_rows", t.sum_rows != nil),
            ("row_norms", t.row_norms != nil), ("scale_rows", t.scale_rows != nil),
            ("row_dots", t.row_dots != nil), ("softmax_xent", t.softmax_xent != nil),
            ("sum_squares", t.sum_squares != nil), ("adamw", t.adamw != nil),
        ]
        return present.first { !$0.1 }?.0
    }

    private static func lastDlerror() -> String? {
        guard let e = dlerror() else { return nil }
        return String(cString: e)
    }

    static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return (path as NSString).standardizingPath }
        let cwd = FileManager.default.currentDirectoryPath
        return ((cwd as NSString).appendingPathComponent(path) as NSString).standardizingPath
    }

    static func resolvedPath(_ path: String) -> String {
        guard let r = realpath(path, nil) else { return path }
        defer { Foundation.free(r) }
        return String(cString: r)
    }
}
