import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
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
// @unchecked: the handle and function table are immutable after loading and the library
// is never unloaded.
public final class KernelPlugin: @unchecked Sendable {
    /// The file the plugin was loaded from (absolute).
    public let path: String
    /// The plugin's short name (e.g. "cpu-openblas").
    public let name: String
    public let description: String

    /// The ABI version the plugin serves this host (1, 2 or 3): a v1 plugin has no probe,
    /// device_info, create_with_options, compile_kernels, divide or multiply; a v2 plugin
    /// has no transformer kernels (embedding, RMSNorm, RoPE, attention, SiLU gate, token_xent).
    public let abiVersion: UInt32

    /// A copy of the plugin's function table: the bytes of `abiVersion`'s members (never
    /// past its struct_size) over a zeroed table, so later versions' members are NULL.
    /// Every function pointer of `abiVersion` is checked non-NULL.
    package let table: opc_plugin
    private let handle: UnsafeMutableRawPointer

    /// File name of the default CPU plugin, as SwiftPM names the dynamic library product.
    #if os(macOS)
    public static let defaultLibraryName = "libOpConvertCPUPlugin.dylib"
    /// File name of the CUDA plugin (SwiftPM product OpConvertCUDAPlugin).
    public static let cudaLibraryName = "libOpConvertCUDAPlugin.dylib"
    #else
    public static let defaultLibraryName = "libOpConvertCPUPlugin.so"
    /// File name of the CUDA plugin (SwiftPM product OpConvertCUDAPlugin).
    public static let cudaLibraryName = "libOpConvertCUDAPlugin.so"
    #endif

    /// Bytes of the table each version needs (OPC_PLUGIN_V1_SIZE / _V2_SIZE / _V3_SIZE:
    /// Swift does not import offsetof macros).
    public static let v1TableSize = MemoryLayout<opc_plugin>.offset(of: \opc_plugin.probe)!
    public static let v2TableSize = MemoryLayout<opc_plugin>.offset(of: \opc_plugin.multiply)! + MemoryLayout<UnsafeRawPointer>.size
    public static let v3TableSize = MemoryLayout<opc_plugin>.offset(of: \opc_plugin.token_xent)! + MemoryLayout<UnsafeRawPointer>.size
    /// The ABI versions this host speaks, newest first (asked in this order).
    public static let supportedVersions: [UInt32] = [3, 2, 1]

    static func tableSize(version: UInt32) -> Int {
        version >= 3 ? v3TableSize : version == 2 ? v2TableSize : v1TableSize
    }

    private init(path: String, handle: UnsafeMutableRawPointer, table: opc_plugin, version: UInt32) {
        self.path = path
        self.handle = handle
        self.table = table
        self.abiVersion = version
        self.name = table.name.map { String(cString: $0) } ?? "(unnamed)"
        self.description = table.description.map { String(cString: $0) } ?? ""
    }

    /// Whether the v2 members (probe, device_info, create_with_options, compile_kernels,
    /// divide, multiply) are there.
    public var hasVersion2: Bool { abiVersion >= 2 }

    /// Whether the v3 transformer kernels are there.
    public var hasVersion3: Bool { abiVersion >= 3 }

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

    /// The first `library` (a file name) in the default search directories, or nil.
    public static func find(library: String) -> String? {
        defaultSearchDirectories().map { $0 + "/" + library }.first { FileManager.default.fileExists(atPath: $0) }
    }

    /// In words, the order `defaultSearchDirectories` follows (error messages quote it).
    public static let searchOrderDescription =
        "beside the executable, then ../lib/opconvert from its resolved path, then the build directory, then $\(pluginPathVariable)"

    /// Extra plugin directories, colon-separated, searched last.
    public static let pluginPathVariable = "OPCONVERT_PLUGIN_PATH"

    /// The directories searched for the default plugin, in order: the running executable's
    /// directory (/proc/self/exe on Linux, then the same path with symlinks resolved), the
    /// installed layout's PREFIX/lib/opconvert (../lib/opconvert from the resolved
    /// executable), the directory of `CommandLine.arguments[0]` (found on PATH when it has no
    /// slash; also symlink-resolved), the directory holding a loaded `.xctest` bundle (tests,
    /// the build directory), then each directory of $OPCONVERT_PLUGIN_PATH.
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
        let selfExe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        add(executable: selfExe)
        #else
        let selfExe: String? = nil
        #endif
        add(executable: Bundle.main.executablePath)
        // An installed binary (PREFIX/bin/opconvert) keeps its plugins in PREFIX/lib/opconvert.
        if let exe = selfExe ?? Bundle.main.executablePath, !exe.isEmpty {
            let binDir = (resolvedPath(absolutePath(exe)) as NSString).deletingLastPathComponent
            let libDir = ((binDir as NSString).deletingLastPathComponent as NSString).appendingPathComponent("lib/opconvert")
            if !dirs.contains(libDir) { dirs.append(libDir) }
        }
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
        if let extra = ProcessInfo.processInfo.environment[pluginPathVariable] {
            for dir in extra.split(separator: ":").map(String.init) where !dir.isEmpty {
                let absolute = absolutePath(dir)
                if !dirs.contains(absolute) { dirs.append(absolute) }
            }
        }
        return dirs
    }

    /// Makes a context (plugin state: threads, handles, streams) on device 0 with the
    /// defaults. `threads <= 0`: plugin default.
    public func makeContext(threads: Int = 0) throws -> KernelContext {
        try makeContext(device: 0, threads: threads)
    }

    /// Makes a context on `device` (0-based): create_with_options on a v2 plugin, create on
    /// a v1 plugin (which has only device 0 and ignores TF32 and the cache folder).
    /// `cacheDirectory` nil: the plugin's default; "": no disk cache.
    public func makeContext(device: Int, threads: Int = 0, allowTF32: Bool = false,
                            cacheDirectory: String? = nil) throws -> KernelContext {
        try KernelContext(plugin: self, table: table, device: device, threads: threads, allowTF32: allowTF32,
                          cacheDirectory: cacheDirectory)
    }

    // MARK: - Loading

    /// One KernelPlugin per file, so that repeated loads share the table and the handle.
    private static let cache = PluginCache()

    // @unchecked: `plugins` is only touched under `lock`.
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

    /// Opens `file` and asks its entry for each of `versions` in turn (newest first): a
    /// NULL answer or a table of another version moves on to the next; the first table of
    /// the asked version must be well formed. Uncached (tests use it to load a plugin as a
    /// v1 host would).
    package static func open(_ file: String, versions: [UInt32] = supportedVersions) throws -> KernelPlugin {
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
        var found: UInt32?
        for version in versions {
            guard let tablePtr = entry(version) else { continue }
            // Read the two header fields first: an older/other table may be shorter than ours.
            let raw = UnsafeRawPointer(tablePtr)
            let served = raw.loadUnaligned(as: UInt32.self)
            guard served == version else { found = served; continue }
            let size = Int(raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            let needed = tableSize(version: version)
            guard size >= needed else {
                throw PluginError.invalidTable(path: file,
                                               reason: "struct_size is \(size) bytes, ABI version \(version) needs at least \(needed)")
            }
            // Never read past the plugin's table, nor take members of a later version than
            // it serves: copy those bytes into a zeroed table.
            var table = opc_plugin()
            withUnsafeMutableBytes(of: &table) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: min(size, needed, dst.count)))
            }
            if let missing = missingFunction(table, version: version) {
                throw PluginError.incomplete(path: file, function: missing)
            }
            return KernelPlugin(path: file, handle: handle, table: table, version: version)
        }
        throw PluginError.abiMismatch(path: file, expected: versions.last ?? OPC_PLUGIN_ABI_VERSION, found: found)
    }

    /// The first NULL function pointer of the table, in declaration order.
    /// `version` nil: the table's own abi_version.
    package static func missingFunction(_ t: opc_plugin, version: UInt32? = nil) -> String? {
        var present: [(String, Bool)] = [
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
        if (version ?? t.abi_version) >= 2 {
            present += [
                ("probe", t.probe != nil), ("device_info", t.device_info != nil),
                ("create_with_options", t.create_with_options != nil), ("compile_kernels", t.compile_kernels != nil),
                ("divide", t.divide != nil), ("multiply", t.multiply != nil),
            ]
        }
        if (version ?? t.abi_version) >= 3 {
            present += [
                ("embedding_forward", t.embedding_forward != nil), ("embedding_backward", t.embedding_backward != nil),
                ("rmsnorm_forward", t.rmsnorm_forward != nil), ("rmsnorm_backward", t.rmsnorm_backward != nil),
                ("rope", t.rope != nil), ("attention_forward", t.attention_forward != nil),
                ("attention_backward", t.attention_backward != nil), ("silu_gate_forward", t.silu_gate_forward != nil),
                ("silu_gate_backward", t.silu_gate_backward != nil), ("token_xent", t.token_xent != nil),
            ]
        }
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
