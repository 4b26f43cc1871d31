import OpConvertCore

/// Metadata and side files a rewritten tensor set keeps (convert and merge both need them).
extension ModelWriter {
    /// safetensors files that transformers loads need "format": "pt" in their metadata.
    package static func ensureFormat(_ metadata: [String: String]?) -> [String: String] {
        var m = metadata ?? [:]
        if m["format"] == nil { m["format"] = "pt" }
        return m
    }

    /// The source directory's non-weight files; config.json gets its dtype updated when the
    /// weights are cast (else copied byte for byte).
    package static func carriedFiles(from store: TensorStore, castTo dtype: DType?) throws -> [(source: String?, name: String, contents: [UInt8]?)] {
        try store.auxiliaryFiles.map { name in
            let source = FileSystem.join(store.directory, name)
            if name == "config.json", let dtype, let torchName = dtype.torchName {
                return (nil, name, try ModelConfig.rewritingDType(at: source, to: torchName))
            }
            return (source, name, nil)
        }
    }
}
