import OpConvertCore

/// The header and tensor order of a safetensors file, computed exactly as the reference
/// writer does: tensors by dtype (enum order) descending, then name ascending; compact
/// JSON with `__metadata__` first (keys sorted); padded with spaces to a multiple of 8.
public struct SafetensorsLayout: Sendable {
    public let order: [TensorSpec]
    public let offsets: [Range<Int>]
    /// The 8-byte length followed by the padded JSON header.
    public let headerBytes: [UInt8]
    public var dataSize: Int { offsets.last?.upperBound ?? 0 }
    public var fileSize: Int { headerBytes.count + dataSize }

    public init(tensors: [TensorSpec], metadata: [String: String]?) {
        let sorted = tensors.sorted { a, b in
            a.dtype.rank != b.dtype.rank ? a.dtype.rank > b.dtype.rank : a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
        }
        var offsets: [Range<Int>] = []
        offsets.reserveCapacity(sorted.count)
        var members: [(String, JSONValue)] = []
        if let metadata {
            let pairs = metadata.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
            members.append(("__metadata__", .object(pairs.map { ($0.key, .string($0.value)) })))
        }
        var position = 0
        for t in sorted {
            let end = position + t.byteCount
            offsets.append(position..<end)
            members.append((t.name, .object([
                ("dtype", .string(t.dtype.rawValue)),
                ("shape", .array(t.shape.map { .int(Int64($0)) })),
                ("data_offsets", .array([.int(Int64(position)), .int(Int64(end))])),
            ])))
            position = end
        }
        var json = Array(JSONWriter.serialize(.object(members), style: .compact).utf8)
        let padding = (8 - json.count % 8) % 8
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: json)
        order = sorted
        self.offsets = offsets
        headerBytes = bytes
    }
}

/// Streams one safetensors file to disk: the header first, then each tensor's bytes in
/// `layout.order`, in as many `write` calls as the caller likes. Nothing but a small
/// coalescing buffer is held in memory. The file appears under its name only on `finish()`.
public final class SafetensorsWriter {
    public let layout: SafetensorsLayout
    public let path: String
    private let output: ByteSink
    private var written = 0
    private var buffer: UnsafeMutableRawBufferPointer
    private var buffered = 0
    private static let bufferSize = 4 << 20

    /// With `compressed`, the file is zstd-compressed as it is written (name it *.zst); with
    /// `background`, writes happen on a background thread (large streamed outputs).
    /// With `policy`, the file is an output the user named (checked by `OutputGuard`,
    /// installed atomically); without, a file inside an output directory being built.
    public init(path: String, tensors: [TensorSpec], metadata: [String: String]?, compressed: Bool = false, background: Bool = false,
                policy: OutputPolicy? = nil) throws {
        self.path = path
        layout = SafetensorsLayout(tensors: tensors, metadata: metadata)
        let sink: ByteSink
        let file = try policy.map { try OutputFile(path: path, kind: .safetensorsFile, policy: $0) }
        if compressed {
            sink = try ZstdOutputFile(path: path)
        } else if background {
            sink = BackgroundWriter(file: try file ?? OutputFile(path: path), expectedSize: layout.fileSize)
        } else {
            sink = try file ?? OutputFile(path: path)
        }
        try layout.headerBytes.withUnsafeBytes { try sink.write($0) }
        output = sink
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 64)
    }

    deinit { buffer.deallocate() }

    /// Index in `layout.order` of the tensor the next bytes belong to.
    public var currentTensorIndex: Int {
        layout.offsets.firstIndex { $0.upperBound > written } ?? layout.order.count
    }

    /// Counts bytes about to be written, refusing more than the header declares.
    private func reserve(_ count: Int) throws {
        guard written + count <= layout.dataSize else {
            throw SafetensorsError.invalidHeader(file: path, reason: "more tensor data written than the header declares (internal error)")
        }
        written += count
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try reserve(bytes.count)
        if bytes.count >= Self.bufferSize / 4 {
            try flush()
            try output.write(bytes)
            return
        }
        if buffered + bytes.count > Self.bufferSize { try flush() }
        UnsafeMutableRawBufferPointer(rebasing: buffer[buffered..<(buffered + bytes.count)]).copyMemory(from: bytes)
        buffered += bytes.count
    }

    /// Bytes that stay valid until `finish` (a mapped input): queued without a copy when the
    /// output writes in the background; `after` runs once they are written.
    public func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws {
        try reserve(bytes.count)
        try flush()
        try output.writeStable(bytes, after: after)
    }

    /// Bytes produced straight into the output's buffer (see `ByteSink.writeInPlace`).
    public func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int {
        try flush()
        return try output.writeInPlace(granule: granule, maxCount: maxCount) { region in
            try reserve(region.count)
            try fill(region)
        }
    }

    private func flush() throws {
        if buffered > 0 {
            try output.write(UnsafeRawBufferPointer(rebasing: buffer[0..<buffered]))
            buffered = 0
        }
    }

    /// Checks every declared byte was written, then syncs and renames the file into place.
    public func finish(sync: Bool = true) throws {
        guard written == layout.dataSize else {
            throw SafetensorsError.invalidHeader(file: path, reason: "only \(written) of \(layout.dataSize) data bytes were written (internal error)")
        }
        try flush()
        try output.commit(sync: sync)
    }
}

extension SafetensorsWriter {
    /// Writes a whole file from in-memory tensors (small outputs: adapters, tests).
    public static func write(path: String, tensors: [(TensorSpec, [UInt8])], metadata: [String: String]?) throws {
        let writer = try SafetensorsWriter(path: path, tensors: tensors.map(\.0), metadata: metadata)
        var byName: [String: [UInt8]] = [:]
        for (spec, bytes) in tensors { byName[spec.name] = bytes }
        for spec in writer.layout.order {
            guard let bytes = byName[spec.name], bytes.count == spec.byteCount else {
                throw SafetensorsError.sizeMismatch(file: path, tensor: spec.name, expected: spec.byteCount, actual: byName[spec.name]?.count ?? 0)
            }
            try bytes.withUnsafeBytes { try writer.write($0) }
        }
        try writer.finish()
    }
}
