import Foundation

/// `opconvert convert`: re-writes a tensor set, casting float tensors to one dtype and
/// copying everything else byte for byte, keeping metadata.
public struct ConvertOptions: Sendable {
    public var input: String
    public var output: String
    public var dtype: FloatDType?
    public var maxShardSize: Int
    public var overwrite: Bool
    public var showProgress: Bool?

    public init(input: String, output: String, dtype: FloatDType? = nil, maxShardSize: Int = 5_000_000_000,
                overwrite: Bool = false, showProgress: Bool? = nil) {
        self.input = input
        self.output = output
        self.dtype = dtype
        self.maxShardSize = maxShardSize
        self.overwrite = overwrite
        self.showProgress = showProgress
    }
}

public struct ConvertSummary: Codable, Sendable {
    public var input: String
    public var output: String
    public var tensors: Int
    public var castTensors: Int
    public var copiedTensors: Int
    public var inputBytes: Int
    public var outputBytes: Int
    public var files: [String]
    public var seconds: Double
}

public enum Converter {
    /// Output is a single file when its name ends in .safetensors, else a model directory.
    public static func target(for output: String, maxShardSize: Int) -> OutputTarget {
        output.hasSuffix(".safetensors") ? .file(output) : .directory(output, maxShardSize: maxShardSize)
    }

    public static func run(_ options: ConvertOptions) throws -> ConvertSummary {
        let started = Date()
        let store = try TensorStore.open(options.input)
        try checkNotSameAsInput(output: options.output, store: store)
        let target = target(for: options.output, maxShardSize: options.maxShardSize)

        let toDType = options.dtype?.dtype
        func outputDType(_ d: DType) -> DType {
            guard let toDType, d.isCastableFloat else { return d }
            return toDType
        }
        let specs = store.entries.map { TensorSpec(name: $0.info.name, dtype: outputDType($0.info.dtype), shape: $0.info.shape) }
        var writer = ModelWriter(target: target, tensors: specs, metadata: ensureFormat(store.metadata), overwrite: options.overwrite)
        if case .directory = target {
            writer.extraFiles = try carriedFiles(from: store, castTo: toDType)
            if let meta = store.indexMetadata?.objectValue { writer.indexMetadata = meta }
        }

        let progress = ProgressBar(label: "convert", totalItems: specs.count, totalBytes: store.totalBytes, enabled: options.showProgress)
        var cast = 0
        let chunk = ChunkBuffer()
        let result = try writer.write { spec, sink in
            let entry = store.entry(named: spec.name)!
            let src = store.data(entry)
            if entry.info.dtype == spec.dtype {
                try sink.write(src)
            } else {
                cast += 1
                try chunk.convertStreaming(src, from: entry.info.dtype, to: spec.dtype, count: entry.info.elementCount, into: sink)
            }
            progress.advance(bytes: src.count)
        }
        progress.finish()
        return ConvertSummary(input: options.input, output: options.output, tensors: specs.count, castTensors: cast,
                              copiedTensors: specs.count - cast, inputBytes: store.totalBytes, outputBytes: result.bytesWritten,
                              files: result.files, seconds: Date().timeIntervalSince(started))
    }

    /// safetensors files that transformers loads need "format": "pt" in their metadata.
    static func ensureFormat(_ metadata: [String: String]?) -> [String: String] {
        var m = metadata ?? [:]
        if m["format"] == nil { m["format"] = "pt" }
        return m
    }

    static func checkNotSameAsInput(output: String, store: TensorStore) throws {
        let out = FileSystem.canonical(output)
        let inputs = [store.path, store.directory] + store.files.map(\.path)
        for p in inputs where out != nil && FileSystem.canonical(p) == out {
            throw PipelineError.outputIsInput(output)
        }
    }

    /// The source directory's non-weight files; config.json gets its dtype updated when the
    /// weights are cast (else copied byte for byte).
    static func carriedFiles(from store: TensorStore, castTo dtype: DType?) throws -> [(source: String?, name: String, contents: [UInt8]?)] {
        try store.auxiliaryFiles.map { name in
            let source = FileSystem.join(store.directory, name)
            if name == "config.json", let dtype, let torchName = dtype.torchName {
                return (nil, name, try ModelConfig.rewritingDType(at: source, to: torchName))
            }
            return (source, name, nil)
        }
    }
}

/// A reusable conversion buffer: converts a tensor in pieces and hands each to the sink,
/// so a multi-GB tensor never needs a second multi-GB copy.
final class ChunkBuffer {
    private var storage: UnsafeMutableRawBufferPointer
    static let bytes = 16 << 20

    init() { storage = .allocate(byteCount: Self.bytes, alignment: 64) }
    deinit { storage.deallocate() }

    func convertStreaming(_ src: UnsafeRawBufferPointer, from: DType, to: DType, count: Int, into sink: TensorSink) throws {
        let outWidth = to.byteWidth!, inWidth = from.byteWidth!
        let perChunk = Self.bytes / max(outWidth, 4)
        var done = 0
        while done < count {
            let n = min(perChunk, count - done)
            DTypeConversion.convert(src.baseAddress! + done * inWidth, from, to: storage.baseAddress!, to, count: n)
            try sink.write(UnsafeRawBufferPointer(rebasing: storage[0..<(n * outWidth)]))
            done += n
        }
    }
}
