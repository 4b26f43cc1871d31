import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import COpConvertPluginABI

/// A plugin context (`opc_context`): the state kernels run on (threads, handles, a stream).
///
/// Calls on one context are ordered; use a context from one thread at a time (it may move
/// between threads). Buffers keep their context alive, so the context is destroyed only
/// after every buffer allocated from it has been freed.
// @unchecked: its C handle is immutable; calls are ordered by the caller, one thread at a
// time (above), which the plugin ABI requires.
public final class KernelContext: @unchecked Sendable {
    public let plugin: KernelPlugin
    /// The thread count requested at creation (<= 0: plugin default).
    public let threads: Int
    /// The device index the context runs on (0-based).
    public let device: Int
    /// Whether GEMMs may use TF32 (asked at creation; only a CUDA plugin honours it).
    public let allowTF32: Bool
    package let raw: OpaquePointer
    /// The function table calls go through: the plugin's, or a test's altered copy.
    package let fns: opc_plugin

    init(plugin: KernelPlugin, table: opc_plugin, device: Int, threads: Int, allowTF32: Bool,
         cacheDirectory: String?) throws {
        self.plugin = plugin
        self.threads = threads
        self.device = device
        self.allowTF32 = allowTF32
        self.fns = table
        var ctx: OpaquePointer?
        let n = Int32(clamping: threads)
        if plugin.hasVersion2, let create = table.create_with_options {
            guard let index = Int32(exactly: device), index >= 0 else {
                throw PluginError.noSuchDevice(plugin: plugin.name, device: device, count: nil)
            }
            var options = opc_create_options()
            options.struct_size = UInt32(MemoryLayout<opc_create_options>.size)
            options.device = index
            options.num_threads = n
            options.flags = allowTF32 ? OPC_CREATE_ALLOW_TF32 : 0
            let (code, why) = KernelPlugin.withMessage { buf, len in
                if let cacheDirectory {
                    return cacheDirectory.withCString { dir in
                        options.cache_dir = dir
                        return create(&options, &ctx, buf, len)
                    }
                }
                return create(&options, &ctx, buf, len)
            }
            guard code == OPC_OK else { throw PluginError.contextFailed(plugin: plugin.name, code: Int(code), reason: why) }
        } else {
            guard device == 0 else { throw PluginError.noSuchDevice(plugin: plugin.name, device: device, count: 1) }
            let code = table.create!(&ctx, n)
            guard code == OPC_OK else {
                throw PluginError.kernelFailed(function: "create", code: Int(code),
                                               message: "cannot create a context of plugin \(plugin.name)")
            }
        }
        guard let ctx else {
            throw PluginError.kernelFailed(function: "create", code: OPC_E_DEVICE,
                                           message: "create succeeded but returned no context")
        }
        self.raw = ctx
    }

    deinit { fns.destroy!(raw) }

    /// The plugin's description of the last failure on this context.
    public var lastError: String {
        guard let s = fns.last_error!(raw) else { return "" }
        return String(cString: s)
    }

    /// Turns a plugin return code into a `PluginError.kernelFailed` carrying last_error.
    @inline(__always)
    func check(_ function: String, _ code: Int32) throws {
        if code != OPC_OK {
            throw PluginError.kernelFailed(function: function, code: Int(code), message: lastError)
        }
    }

    // MARK: - Memory

    /// `count` zero-filled f32 elements of device memory.
    public func alloc(count: Int) throws -> DeviceBuffer {
        guard count >= 0, count <= Int.max / 4 else {
            throw PluginError.invalidArgument(function: "alloc", reason: "bad element count \(count)")
        }
        return try allocate(bytes: count * 4, elementSize: 4, function: "alloc")
    }

    /// `bytes` zero-filled bytes of device memory (a buffer of 1-byte elements).
    public func allocBytes(_ bytes: Int) throws -> DeviceBuffer {
        guard bytes >= 0 else { throw PluginError.invalidArgument(function: "alloc", reason: "negative byte count \(bytes)") }
        return try allocate(bytes: bytes, elementSize: 1, function: "alloc")
    }

    func allocate(bytes: Int, elementSize: Int, function: String) throws -> DeviceBuffer {
        var p: UnsafeMutableRawPointer?
        try check(function, fns.alloc!(raw, bytes, &p))
        guard let p else {
            throw PluginError.kernelFailed(function: function, code: OPC_E_DEVICE, message: "alloc returned NULL")
        }
        return DeviceBuffer(context: self, pointer: p, count: bytes / elementSize, elementSize: elementSize)
    }

    /// Frees a buffer's allocation (called by DeviceBuffer.deinit; errors are ignored there).
    func release(_ p: UnsafeMutableRawPointer) { _ = fns.free!(raw, p) }

    /// Copies `values` into the first `values.count` elements of the f32 buffer `to`.
    public func upload(_ values: [Float], to dst: DeviceBuffer) throws {
        try requireF32("upload", dst, "destination", atLeast: values.count)
        try values.withUnsafeBytes { try upload(bytes: $0, to: dst) }
    }

    /// Copies raw bytes into the start of `dst`.
    public func upload(bytes: UnsafeRawBufferPointer, to dst: DeviceBuffer) throws {
        try requireSame(dst)
        guard bytes.count <= dst.byteCount else {
            throw PluginError.invalidArgument(function: "upload",
                                              reason: "\(bytes.count) bytes do not fit a \(dst.byteCount)-byte buffer")
        }
        try check("upload", fns.upload!(raw, dst.pointer, bytes.baseAddress, bytes.count))
    }

    /// Uploads int64 class labels into a new device buffer (8-byte elements).
    public func uploadLabels(_ labels: [Int64]) throws -> DeviceBuffer {
        let buf = try allocate(bytes: labels.count * 8, elementSize: 8, function: "alloc")
        try labels.withUnsafeBytes { try upload(bytes: $0, to: buf) }
        return buf
    }

    /// The whole f32 buffer, downloaded (synchronous).
    public func download(_ src: DeviceBuffer) throws -> [Float] {
        try requireF32("download", src)
        var out = [Float](repeating: 0, count: src.count)
        try out.withUnsafeMutableBytes { try download(bytes: $0, from: src) }
        return out
    }

    /// Downloads the first `bytes.count` bytes of `src` (synchronous).
    public func download(bytes: UnsafeMutableRawBufferPointer, from src: DeviceBuffer) throws {
        try requireSame(src)
        guard bytes.count <= src.byteCount else {
            throw PluginError.invalidArgument(function: "download",
                                              reason: "\(bytes.count) bytes requested from a \(src.byteCount)-byte buffer")
        }
        try check("download", fns.download!(raw, bytes.baseAddress, src.pointer, bytes.count))
    }

    /// The whole buffer's bytes, downloaded.
    public func downloadBytes(_ src: DeviceBuffer) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: src.byteCount)
        try out.withUnsafeMutableBytes { try download(bytes: $0, from: src) }
        return out
    }

    /// Copies all of `src` into the start of `dst` (device to device; may overlap).
    public func copy(from src: DeviceBuffer, to dst: DeviceBuffer) throws {
        try requireSame(src); try requireSame(dst)
        guard src.byteCount <= dst.byteCount else {
            throw PluginError.invalidArgument(function: "copy",
                                              reason: "\(src.byteCount) bytes do not fit a \(dst.byteCount)-byte buffer")
        }
        try check("copy", fns.copy!(raw, dst.pointer, src.pointer, src.byteCount))
    }

    /// Sets every element of the f32 buffer to `value`.
    public func fill(_ x: DeviceBuffer, with value: Float) throws {
        try requireF32("fill", x)
        try check("fill", fns.fill!(raw, x.pointer, value, x.count))
    }

    // MARK: - Host-side argument checks (before anything reaches the plugin)

    func requireSame(_ b: DeviceBuffer) throws {
        // Buffers of another context of the same plugin share the device address space on
        // the CPU and on one CUDA device; a buffer of another plugin is a host bug.
        guard b.context.plugin === plugin else {
            throw PluginError.invalidArgument(function: "(any)",
                                              reason: "buffer belongs to plugin \(b.context.plugin.path), not \(plugin.path)")
        }
    }

    /// An f32 buffer of this plugin, with at least `atLeast` elements when given.
    func requireF32(_ function: String, _ b: DeviceBuffer, _ role: String = "buffer", atLeast n: Int? = nil) throws {
        try requireSame(b)
        guard b.elementSize == 4 else {
            throw PluginError.invalidArgument(function: function,
                                              reason: "\(role) has \(b.elementSize)-byte elements, f32 expected")
        }
        if let n { try requireCount(function, b, atLeast: n, role) }
    }

    func requireCount(_ function: String, _ b: DeviceBuffer, atLeast n: Int, _ role: String) throws {
        guard b.count >= n else {
            throw PluginError.invalidArgument(function: function,
                                              reason: "\(role) has \(b.count) elements, \(n) needed")
        }
    }

    func int32(_ function: String, _ name: String, _ v: Int) throws -> Int32 {
        guard v >= 0, v <= Int(Int32.max) else {
            throw PluginError.invalidArgument(function: function, reason: "\(name)=\(v) is outside [0, \(Int32.max)]")
        }
        return Int32(v)
    }
}

/// Device memory: a device pointer and an element count (f32 unless made by allocBytes or
/// uploadLabels). Never dereference `pointer` on the host: on a CUDA plugin it is a device
/// address. An owning buffer frees its memory through its context when released; a slice
/// is a non-owning view that keeps its parent (and so the memory) alive.
// @unchecked: only immutable lets (a device address the host never dereferences) and the
// context, which orders its own calls.
public final class DeviceBuffer: @unchecked Sendable {
    public let context: KernelContext
    /// The device address (offset for slices). Opaque to the host.
    public let pointer: UnsafeMutableRawPointer
    /// Number of elements.
    public let count: Int
    /// Bytes per element: 4 (f32), 8 (int64 labels) or 1 (raw bytes).
    public let elementSize: Int
    private let parent: DeviceBuffer?

    public var byteCount: Int { count * elementSize }
    public var isSlice: Bool { parent != nil }

    init(context: KernelContext, pointer: UnsafeMutableRawPointer, count: Int, elementSize: Int,
         parent: DeviceBuffer? = nil) {
        self.context = context
        self.pointer = pointer
        self.count = count
        self.elementSize = elementSize
        self.parent = parent
    }

    deinit {
        if parent == nil { context.release(pointer) }
    }

    /// A view of elements [offset, offset + count) sharing this buffer's memory. The device
    /// pointer is offset with byte arithmetic only; it is never dereferenced.
    public func slice(offset: Int, count: Int) -> DeviceBuffer {
        precondition(offset >= 0 && count >= 0 && offset <= self.count - count,
                     "slice [\(offset), \(offset)+\(count)) out of range of a \(self.count)-element buffer")
        return DeviceBuffer(context: context, pointer: pointer + offset * elementSize, count: count,
                            elementSize: elementSize, parent: parent ?? self)
    }
}
