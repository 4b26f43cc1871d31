import Dispatch
import Foundation

/// Performs an OutputFile's writes on background threads, so that computing the next bytes
/// (decode, GEMM, encode) overlaps the kernel writing the previous ones. Bytes are gathered
/// into a small pool of fixed slots (bounded memory, with back-pressure); producers may
/// fill a slot in place (`writeInPlace`), and each full slot is written as one piece.
///
/// Large outputs use direct I/O where the file system allows it: slots go from our memory
/// to the disk, skipping the copy into the page cache (most of the kernel's work in a
/// buffered write) and its writeback later; two slots are written at once to keep the
/// disk busy. Otherwise writes are buffered and in order, and stable writes (mapped
/// inputs) are queued without a copy. The first write error is reported by the next call
/// or by `commit`.
// @unchecked: `current`, `filled` and `submitted` are only touched by the one producing
// thread (the caller of write/writeInPlace/commit); the slot pool and `failure` are
// guarded by `lock`; the file is written by the queues at disjoint offsets (direct) or
// by one serial queue (buffered).
public final class BackgroundWriter: ByteSink, @unchecked Sendable {
    private let file: OutputFile
    /// Set when the file was switched to direct I/O.
    package let isDirect: Bool
    private let queues: [DispatchQueue]
    private var nextQueue = 0
    private let free: DispatchSemaphore
    private let slotSize: Int
    private var pool: [UnsafeMutableRawPointer]
    private let allSlots: [UnsafeMutableRawPointer]
    private let lock = NSLock()
    private var failure: Error?
    /// The slot being filled, its bytes so far, and the file offset where it starts.
    private var current: UnsafeMutableRawPointer?
    private var filled = 0
    private var submitted = 0

    /// Outputs at least this large (bytes) try direct I/O; small files are not worth it.
    public static let directIOMinimumSize = 64 << 20
    /// Direct I/O alignment of buffers, offsets and lengths (a page: what Linux file
    /// systems accept on common devices; a refusal falls back to buffered writes).
    static let directAlignment = 4096

    /// `direct`: try direct I/O (`expectedSize >= directIOMinimumSize` is the usual rule).
    public init(file: OutputFile, direct: Bool = false, slotSize: Int = 8 << 20, slots: Int? = nil) {
        self.file = file
        let alignment = Self.directAlignment
        let size = max(alignment, (slotSize + alignment - 1) / alignment * alignment)
        isDirect = direct && file.enableDirectIO()
        self.slotSize = size
        // Direct: two writes in flight while the producer fills the rest.
        let count = max(2, slots ?? (isDirect ? 6 : 4))
        allSlots = (0..<count).map { _ in UnsafeMutableRawPointer.allocate(byteCount: size, alignment: alignment) }
        pool = allSlots
        free = DispatchSemaphore(value: count)
        queues = (0..<(isDirect ? 2 : 1)).map { DispatchQueue(label: "opconvert.background-writer.\($0)") }
    }

    /// A writer for an output of `expectedSize` bytes: direct I/O when it is large.
    public convenience init(file: OutputFile, expectedSize: Int) {
        self.init(file: file, direct: expectedSize >= Self.directIOMinimumSize && Self.directIOAllowed)
    }

    /// `OPCONVERT_DIRECT_IO=0` keeps every write buffered (for file systems or disks where
    /// the page cache writes faster than direct I/O; the bytes written are the same).
    static let directIOAllowed: Bool = {
        guard let v = getenv("OPCONVERT_DIRECT_IO") else { return true }
        return String(cString: v) != "0"
    }()

    // Queued work holds `self` strongly, so once this runs nothing of ours is pending (and
    // it may run on a queue itself: no waiting on it here).
    deinit {
        // A slot still being filled (dropped without commit, after an error) goes back, so
        // the semaphore is at its initial value (libdispatch traps otherwise).
        if current != nil { free.signal() }
        for p in allSlots { p.deallocate() }
    }

    private func checkFailure() throws {
        if let e = lock.withLock({ failure }) { throw e }
    }

    private func run(_ body: () throws -> Void) {
        guard lock.withLock({ failure == nil }) else { return }
        do { try body() } catch { lock.withLock { if failure == nil { failure = error } } }
    }

    /// The slot being filled, taking a free one (waiting for a write to finish) if needed.
    private func currentSlot() -> UnsafeMutableRawPointer {
        if let current { return current }
        free.wait()
        let slot = lock.withLock { pool.removeLast() }
        current = slot
        filled = 0
        return slot
    }

    /// Queues the current slot's bytes and returns it to the pool once they are written.
    private func submit() {
        guard let slot = current else { return }
        current = nil
        let count = filled, offset = submitted
        submitted += count
        filled = 0
        let piece = UncheckedSendable(UnsafeRawBufferPointer(start: slot, count: count))
        let queue = queues[nextQueue]
        nextQueue = (nextQueue + 1) % queues.count
        queue.async { [self] in
            if isDirect {
                run { try file.write(piece.value, at: offset) }
            } else {
                run { try file.write(piece.value) }
            }
            lock.withLock { pool.append(UnsafeMutableRawPointer(mutating: piece.value.baseAddress!)) }
            free.signal()
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkFailure()
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let slot = currentSlot()
            let n = min(slotSize - filled, bytes.count - offset)
            (slot + filled).copyMemory(from: base + offset, byteCount: n)
            filled += n
            offset += n
            if filled == slotSize { submit() }
        }
    }

    public func writeInPlace(granule: Int, maxCount: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Int {
        try checkFailure()
        let unit = max(granule, 1)
        let slot = currentSlot()
        let units = min(slotSize - filled, maxCount) / unit
        guard units > 0 else {
            // Less than a unit of room left in this slot (or a unit larger than a slot):
            // the unit is made aside and copied across the slot boundary.
            return try ByteSinks.writeThroughBuffer(granule: unit, maxCount: unit, fill) { try write($0) }
        }
        let count = units * unit
        try fill(UnsafeMutableRawBufferPointer(start: slot + filled, count: count))
        filled += count
        if filled == slotSize { submit() }
        return count
    }

    public func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws {
        if isDirect {
            // Direct writes need aligned buffers: copy into the slots (the copy replaces
            // the kernel's own copy into the page cache), piece by piece so `after` can
            // release a mapped input's pages as they are consumed.
            var offset = 0
            repeat {
                let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<min(bytes.count, offset + slotSize)])
                try write(piece)
                after?(piece)
                offset += slotSize
            } while offset < bytes.count
            return
        }
        try checkFailure()
        // In order after what is gathered so far; then written in slot-sized pieces, each
        // handed to `after` as soon as it is out (so a mapped input's pages can be
        // released progressively).
        submit()
        var offset = 0
        repeat {
            let piece = UncheckedSendable(UnsafeRawBufferPointer(rebasing: bytes[offset..<min(bytes.count, offset + slotSize)]))
            submitted += piece.value.count
            queues[0].async { [self] in
                run { try file.write(piece.value) }
                after?(piece.value)
            }
            offset += slotSize
        } while offset < bytes.count
    }

    public func commit(sync: Bool) throws {
        try checkFailure()
        if isDirect, current != nil {
            // The aligned part of the last slot goes direct; the short tail through the page
            // cache once every direct write is done.
            let aligned = filled / Self.directAlignment * Self.directAlignment
            let tail = filled - aligned
            let start = submitted
            filled = aligned
            let slot = current!
            submit()
            for q in queues { q.sync {} }
            try checkFailure()
            if tail > 0 {
                file.disableDirectIO()
                try file.write(UnsafeRawBufferPointer(start: slot + aligned, count: tail), at: start + aligned)
            }
        } else {
            submit()
            for q in queues { q.sync {} }
            try checkFailure()
        }
        try file.commit(sync: sync)
    }
}
