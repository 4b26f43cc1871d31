/// Text from files (tensor and module names, metadata) printed to a terminal: control
/// characters could rewrite the line or the screen (ESC sequences, \r), and bidi controls
/// or line separators could make a name read as something else. They are shown escaped,
/// `\n`, `\t`, `\r` or `\u{1b}` style; everything else, other non-ASCII text included, is
/// kept. Backslashes are not doubled, so the form is for reading, not for parsing back.
public func escapedForDisplay(_ s: String) -> String {
    var s = s
    return s.withUTF8 { bytes in
        guard let first = TextEscaping.firstTrigger(bytes, from: 0) else { return nil }
        return TextEscaping.escape(bytes, from: first)
    } ?? s
}

extension String {
    /// This text with control, line-separator and bidi-override characters escaped (see
    /// `escapedForDisplay`).
    public var displayEscaped: String { escapedForDisplay(self) }
}

enum TextEscaping {
    static func needsEscaping(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x00...0x1F, 0x7F...0x9F: return true         // C0, DEL, C1
        case 0x2028, 0x2029: return true                    // line and paragraph separators
        case 0x061C, 0x200E, 0x200F: return true            // ALM, LRM, RLM
        case 0x202A...0x202E, 0x2066...0x2069: return true  // bidi embeddings, overrides, isolates
        default: return false
        }
    }

    /// Copies clean runs of bytes as they are; only a scalar whose first byte could start
    /// an escaped one is decoded. Two passes (measure, then write into the string's own
    /// storage) so a long text is not copied through a temporary buffer.
    static func escape(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> String {
        var length = bytes.count
        forEachEscape(bytes, from: start) { _, consumed, replacement in length += replacement.count - consumed }
        return String(unsafeUninitializedCapacity: length) { out in
            var run = 0, w = 0
            func copy(_ source: UnsafeBufferPointer<UInt8>) {
                UnsafeMutableBufferPointer(rebasing: out[w..<(w + source.count)]).initialize(fromContentsOf: source)
                w += source.count
            }
            forEachEscape(bytes, from: start) { at, consumed, replacement in
                copy(UnsafeBufferPointer(rebasing: bytes[run..<at]))
                replacement.withUnsafeBufferPointer { copy($0) }
                run = at + consumed
            }
            copy(UnsafeBufferPointer(rebasing: bytes[run..<bytes.count]))
            return w
        }
    }

    /// Calls `body(offset, bytesReplaced, replacement)` for each scalar to escape, in order.
    private static func forEachEscape(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int,
                                      _ body: (Int, Int, [UInt8]) -> Void) {
        var i = start
        while let t = firstTrigger(bytes, from: i) {
            i = t
            let b = bytes[i]
            let scalar: UInt32, length: Int
            switch b {
            case 0xC2, 0xD8: (scalar, length) = (UInt32(b & 0x1F) << 6 | UInt32(bytes[i + 1] & 0x3F), 2)
            case 0xE2: (scalar, length) = (UInt32(b & 0x0F) << 12 | UInt32(bytes[i + 1] & 0x3F) << 6 | UInt32(bytes[i + 2] & 0x3F), 3)
            default: (scalar, length) = (UInt32(b), 1)
            }
            if needsEscaping(Unicode.Scalar(scalar)!) {
                switch scalar {
                case 0x0A: body(i, length, Array("\\n".utf8))
                case 0x09: body(i, length, Array("\\t".utf8))
                case 0x0D: body(i, length, Array("\\r".utf8))
                default: body(i, length, Array("\\u{\(String(scalar, radix: 16))}".utf8))
                }
            }
            i += length
        }
    }

    /// The first byte at or after `start` that could begin an escaped scalar; plain ASCII
    /// is skipped eight bytes at a time (bit tricks from "Bit Twiddling Hacks").
    static func firstTrigger(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        let raw = UnsafeRawPointer(base), n = bytes.count
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        var i = start
        while i < n {
            while i + 8 <= n {
                let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                let del = w ^ (ones &* 0x7F)
                // Any byte >= 0x80, < 0x20 or == 0x7F ends the fast path for this word.
                if w & highs != 0 || (w &- ones &* 0x20) & ~w & highs != 0 || (del &- ones) & ~del & highs != 0 { break }
                i += 8
            }
            let stop = min(i + 8, n)
            while i < stop {
                if isTrigger(bytes[i]) { return i }
                i += 1
            }
        }
        return nil
    }

    /// Every escaped scalar starts with a byte below 0x20, 0x7F, or a lead byte C2, D8 or E2.
    @inline(__always) static func isTrigger(_ b: UInt8) -> Bool {
        b < 0x20 || b == 0x7F || b == 0xC2 || b == 0xD8 || b == 0xE2
    }

}
