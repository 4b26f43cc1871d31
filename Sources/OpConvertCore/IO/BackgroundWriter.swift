import Dispatch
import Foundation

/// Performs an OutputFile's writes on a background thread, so that computing the next
/// bytes (decode, GEMM, encode) overlaps the kernel copying the previous ones into the page
/// cache. Copied writes go through a small pool of fixed buffers (bounded memory, with
/// back-pressure); stable writes (mapped inputs) are queued without a copy. The first write
/// error is reported by the next call or by `commit`.
// @unchecked: `file` and `pool` are touched only on `queue` or under `lock`.
public final class BackgroundWriter: ByteSink, @unchecked Sendable {
    private let file: OutputFile
    private let queue = DispatchQueue(label: "opconvert.background-writer")
    private let free: DispatchSemaphore
    private let slotSize: Int
    private var pool: [UnsafeMutableRawPointer]
    private let allSlots: [UnsafeMutableRawPointer]
    private let lock = NSLock()
    private var failure: Error?

    public init(file: OutputFile, slotSize: Int = 8 << 20, slots: Int = 4) {
        self.file = file
        self.slotSize = slotSize
        allSlots = (0..<slots).map { _ in UnsafeMutableRawPointer.allocate(byteCount: slotSize, alignment: 64) }
        pool = allSlots
        free = DispatchSemaphore(value: slots)
    }

    // Queued work holds `self` strongly, so once this runs nothing of ours is pending (and
    // it may run on `queue` itself: no waiting on it here).
    deinit {
        for p in allSlots { p.deallocate() }
    }

    private func checkFailure() throws {
        if let e = lock.withLock({ failure }) { throw e }
    }

    private func run(_ body: () throws -> Void) {
        guard lock.withLock({ failure == nil }) else { return }
        do { try body() } catch { lock.withLock { if failure == nil { failure = error } } }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkFailure()
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let n = min(slotSize, bytes.count - offset)
            free.wait()
            let slot = lock.withLock { pool.removeLast() }
            slot.copyMemory(from: base + offset, byteCount: n)
            let piece = UncheckedSendable(UnsafeRawBufferPointer(start: slot, count: n))
            queue.async { [self] in
                run { try file.write(piece.value) }
                lock.withLock { pool.append(UnsafeMutableRawPointer(mutating: piece.value.baseAddress!)) }
                free.signal()
            }
            offset += n
        }
    }

    public func writeStable(_ bytes: UnsafeRawBufferPointer, after: (@Sendable (UnsafeRawBufferPointer) -> Void)?) throws {
        try checkFailure()
        // Written in slot-sized pieces, each handed to `after` as soon as it is out (so a
        // mapped input's pages can be released progressively).
        var offset = 0
        repeat {
            let piece = UncheckedSendable(UnsafeRawBufferPointer(rebasing: bytes[offset..<min(bytes.count, offset + slotSize)]))
            queue.async { [self] in
                run { try file.write(piece.value) }
                after?(piece.value)
            }
            offset += slotSize
        } while offset < bytes.count
    }

    public func commit(sync: Bool) throws {
        queue.sync {}
        try checkFailure()
        try file.commit(sync: sync)
    }
}
