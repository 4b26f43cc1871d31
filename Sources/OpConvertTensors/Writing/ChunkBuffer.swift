import OpConvertCore

/// A reusable conversion buffer: converts a tensor in pieces and hands each to the sink,
/// so a multi-GB tensor never needs a second multi-GB copy.
package final class ChunkBuffer {
    private var storage: UnsafeMutableRawBufferPointer
    package static let bytes = 16 << 20

    package init() { storage = .allocate(byteCount: Self.bytes, alignment: 64) }
    deinit { storage.deallocate() }

    /// Streams a tensor into the sink: as is when the dtypes agree, else converted in pieces.
    package func write(_ src: UnsafeRawBufferPointer, from: DType, to: DType, count: Int, into sink: TensorSink) throws {
        if from == to {
            try sink.write(src)
        } else {
            try convertStreaming(src, from: from, to: to, count: count, into: sink)
        }
    }

    /// Streams a tensor of a mapped input: copies are queued without an intermediate copy,
    /// casts are converted in pieces; either way its pages are released once consumed.
    package func write(_ entry: TensorStore.Entry, of store: TensorStore, to: DType, into sink: TensorSink) throws {
        let file = store.files[entry.file], info = entry.info
        guard info.dtype != to else {
            let mapping = file.mapping
            try sink.writeStable(store.data(entry), after: { piece in
                if let p = piece.baseAddress, let base = mapping.bytes.baseAddress { mapping.release(offset: p - base, count: piece.count) }
            })
            return
        }
        try convertStreaming(store.data(entry), from: info.dtype, to: to, count: info.elementCount, into: sink)
        file.release(info)
    }

    package func convertStreaming(_ src: UnsafeRawBufferPointer, from: DType, to: DType, count: Int, into sink: TensorSink) throws {
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
