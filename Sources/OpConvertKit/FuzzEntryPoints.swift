import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Entry points for the libFuzzer harnesses in Fuzz/: each runs one input parser on raw
/// bytes the way the tool does, and traps (so the fuzzer reports a crash) when a documented
/// rule breaks: a refused input must come back as an error with an exit status other than
/// "internal failure", and what is accepted must be self-consistent. Not a stable API.
public enum FuzzEntryPoints {
    /// `SafetensorsHeader.parse` over a whole file held in memory. Returns true when accepted.
    @discardableResult
    public static func safetensorsHeader(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let header: SafetensorsHeader
        do {
            header = try SafetensorsHeader.parse(prefix: bytes, fileSize: bytes.count, file: "fuzz.safetensors")
        } catch {
            expectClassified(error, allowed: [.dataError])
            return false
        }
        checkLayout(header, fileSize: bytes.count)
        return true
    }

    /// The GGUF container parser (adapters and models) over a whole file held in memory:
    /// refusals are malformed (65) or unsupported (69) inputs; what is accepted has every
    /// tensor inside the file and every float tensor decodable.
    @discardableResult
    public static func ggufFile(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let parsed: GGUFFile.Parsed
        do {
            parsed = try GGUFFile.parse(bytes, path: "fuzz.gguf")
        } catch {
            expectClassified(error, allowed: [.dataError, .unsupported])
            return false
        }
        for t in parsed.tensors {
            precondition(t.offset >= 0 && t.byteCount >= 0, "tensor \(t.name) has a negative range")
            precondition(parsed.dataStart + t.offset + t.byteCount <= bytes.count, "tensor \(t.name) runs past the end of the file")
        }
        return true
    }

    /// The file reader: maps the bytes from a file (zstd-decompressing them first when they
    /// start with the zstd magic, as `SafetensorsFile.open` does for `.zst`), then reads every
    /// tensor through the scan and f32-decode kernels.
    @discardableResult
    public static func safetensorsFile(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let zstdMagic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
        let compressed = bytes.count >= 4 && zip(bytes.prefix(4), zstdMagic).allSatisfy { $0 == $1 }
        return ScratchFile.shared.withFile(holding: bytes) { path in
            let file: SafetensorsFile
            do {
                file = compressed ? try SafetensorsFile(mapping: try ZstdReader.decompress(path: path))
                                  : try SafetensorsFile(path: path)
            } catch {
                // zstd failures are unclassified today (exit 1); see the fuzz report.
                if !(error is ZstdError) { expectClassified(error, allowed: [.dataError]) }
                return false
            }
            checkLayout(file.header, fileSize: file.mapping.count)
            for t in file.tensors {
                let data = file.data(t)
                precondition(data.count == t.byteCount, "data view of \(t.name) has the wrong size")
                _ = TensorScan.nonFinite(data, t.dtype, count: t.elementCount)
                if t.dtype.isDecodableFloat, t.elementCount > 0, let base = data.baseAddress {
                    let out = [Float](unsafeUninitializedCapacity: t.elementCount) { buf, n in
                        DTypeConversion.decode(base, t.dtype, to: buf.baseAddress!, count: t.elementCount)
                        n = t.elementCount
                    }
                    precondition(out.count == t.elementCount)
                }
                file.release(t)
            }
            return true
        }
    }

    /// `adapter_config.json` as `LoraAdapter.openPEFT` reads it, plus the per-module rank
    /// and alpha lookups (rank_pattern / alpha_pattern keys are regexes).
    @discardableResult
    public static func adapterConfig(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let path = "fuzz/adapter_config.json"
        do {
            let json: JSONValue
            do { json = try JSONParser.parse(bytes) } catch {
                throw AdapterError.invalidConfig(path: path, reason: "not valid JSON: \(error.message)")
            }
            let config = try LoraConfig(json: json, path: path)
            for module in ["model.layers.0.self_attn.q_proj", "lm_head"] {
                let rank = config.rank(for: module)
                precondition(rank > 0, "rank for \(module) is \(rank)")
                _ = config.scaling(for: module)
            }
            try config.checkMergeable(path: "fuzz")
            return true
        } catch {
            expectClassified(error, allowed: [.dataError, .unsupported])
            return false
        }
    }

    /// `op_config.json` as `OPConfig(path:)` reads it.
    @discardableResult
    public static func opConfig(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let path = "fuzz/op_config.json"
        do {
            let json: JSONValue
            do { json = try JSONParser.parse(bytes) } catch {
                throw OPError.invalidConfig(path: path, reason: "not valid JSON: \(error.message)")
            }
            let config = try OPConfig(json: json, path: path)
            precondition(config.hidden > 0 && config.zDim > 0 && config.peft.r > 0)
            return true
        } catch {
            expectClassified(error, allowed: [.dataError, .unsupported])
            return false
        }
    }

    /// `model.safetensors.index.json` through `ShardIndex.read`; an accepted index must
    /// survive `ShardIndex.render` and be read back with the same weight map.
    @discardableResult
    public static func shardIndex(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let index: ShardIndex
        do {
            index = try ScratchFile.shared.withFile(holding: bytes) { path throws(SafetensorsError) in try ShardIndex.read(path: path) }
        } catch {
            expectClassified(error, allowed: [.dataError])
            return false
        }
        for shard in index.shards {
            precondition(!shard.isEmpty && !shard.contains("/") && shard != "..", "unsafe shard name accepted: \(shard)")
        }
        // render takes a dictionary; String keys equal under Unicode canonical equivalence
        // would merge there, so only byte-distinct-and-String-distinct maps are round-tripped.
        var map: [String: String] = [:]
        for (tensor, shard) in index.weightMap where map[tensor] == nil { map[tensor] = shard }
        guard map.count == index.weightMap.count else { return true }
        let text = ShardIndex.render(weightMap: map, totalSize: 1, extraMetadata: index.metadata.objectValue ?? [])
        let reread: ShardIndex
        do {
            reread = try text.utf8CString.withUnsafeBytes { raw throws(SafetensorsError) in
                try ScratchFile.shared.withFile(holding: UnsafeRawBufferPointer(rebasing: raw.dropLast())) { path throws(SafetensorsError) in
                    try ShardIndex.read(path: path)
                }
            }
        } catch {
            preconditionFailure("ShardIndex.render wrote an index that does not read back: \(error)")
        }
        precondition(Dictionary(reread.weightMap.map { ($0.tensor, $0.shard) }, uniquingKeysWith: { a, _ in a }) == map,
                     "rendered index reads back with a different weight map")
        return true
    }

    /// A `--key-map` file through `KeyMap(path:)`, then applied to a few tensor names.
    @discardableResult
    public static func keyMap(_ bytes: UnsafeRawBufferPointer) -> Bool {
        do {
            let map = try ScratchFile.shared.withFile(holding: bytes) { path throws in try KeyMap(path: path) }
            for name in ["model.layers.0.mlp.hypernet.0.weight", "lm_head.weight"] { _ = map.apply(name) }
            return true
        } catch {
            expectClassified(error, allowed: [.dataError])
            return false
        }
    }

    /// Traps unless a refusal is a documented, classified error with a message.
    private static func expectClassified(_ error: Error, allowed: Set<ExitStatus>) {
        let status = ExitStatus.of(error)
        precondition(allowed.contains(status), "input refused with exit status \(status.rawValue) (\(type(of: error))): \(error)")
        precondition(!String(describing: error).isEmpty, "refusal without a message")
    }

    /// What an accepted header promises its readers: tensors tile the data buffer in order,
    /// every range lies inside the file, and every name finds its own entry.
    private static func checkLayout(_ header: SafetensorsHeader, fileSize: Int) {
        var position = 0
        for t in header.tensors {
            precondition(t.dataOffsets.lowerBound == position, "tensor \(t.name) does not start where the previous ended")
            precondition(header.dataStart + t.dataOffsets.upperBound <= fileSize, "tensor \(t.name) runs past the end of the file")
            precondition(t.dtype.byteCount(elements: t.elementCount) == t.byteCount, "tensor \(t.name) size disagrees with dtype x shape")
            precondition(header.tensor(named: t.name) == t, "lookup of \(t.name) finds another entry")
            position = t.dataOffsets.upperBound
        }
        precondition(header.dataStart + position == fileSize, "tensors do not cover the data buffer")
    }
}

/// One unlinked temporary file per process, reached as /proc/self/fd/N, for parsers that only
/// read from a path. Inputs are written one at a time under the lock, and the lock is held
/// while the parser reads, so concurrent callers cannot see each other's bytes.
private final class ScratchFile: Sendable {
    static let shared = ScratchFile()
    private let lock = NSLock()
    private let fd: Int32
    private let path: String

    private init() {
        var template = Array("/tmp/opconvert-fuzz-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        precondition(fd >= 0, "cannot create a scratch file in /tmp")
        let name = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        unlink(name)
        self.fd = fd
        path = "/proc/self/fd/\(fd)"
    }

    func withFile<T, E: Error>(holding bytes: UnsafeRawBufferPointer, _ body: (String) throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        precondition(ftruncate(fd, 0) == 0, "scratch file truncate failed")
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(done))
            precondition(n > 0, "scratch file write failed")
            done += n
        }
        return try body(path)
    }
}
