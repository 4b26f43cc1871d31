import Foundation

/// Surprises that are not errors (an adapter weight of 0, a PEFT default filled in, NaN in a
/// merge result without --safe): the library emits them, the caller decides how to show them.
///
/// `collect` binds a fresh collector for the duration of its body (a task-local, so
/// concurrent library callers and tests each get their own); warnings emitted where none is
/// bound go to a process-wide list that `takeUnbound()` drains. A collector keeps each
/// distinct message once, in emission order. Emit from the calling thread: worker threads
/// of a parallel loop do not see the task-local binding.
public enum Warnings {
    /// A list of messages behind a lock.
    final class Collector: @unchecked Sendable {
        // Safe: `messages` is only read or written while holding `lock`.
        private let lock = NSLock()
        private var messages: [String] = []
        /// Keeps at most this many (the process-wide list of a long-lived library user that
        /// never drains it must not grow without end).
        private let limit: Int

        init(limit: Int = .max) { self.limit = limit }

        func append(_ message: String) {
            lock.lock()
            defer { lock.unlock() }
            if !messages.contains(message) && messages.count < limit { messages.append(message) }
        }

        func peek() -> [String] {
            lock.lock()
            defer { lock.unlock() }
            return messages
        }

        func take() -> [String] {
            lock.lock()
            defer { lock.unlock() }
            let all = messages
            messages = []
            return all
        }
    }

    @TaskLocal static var current: Collector?
    private static let unbound = Collector(limit: 1000)

    public static func emit(_ message: String) {
        (current ?? unbound).append(message)
    }

    /// Runs `body` with its own collector and returns its result with the warnings emitted
    /// inside it (nested `collect` calls keep theirs unless they re-emit them). If `body`
    /// throws, its warnings pass on to the enclosing collector (or the process-wide list),
    /// so a failing command still shows what it warned about.
    public static func collect<T>(_ body: () throws -> T) rethrows -> (T, [String]) {
        let collector = Collector()
        do {
            let result = try $current.withValue(collector) { try body() }
            return (result, collector.take())
        } catch {
            for message in collector.take() { emit(message) }
            throw error
        }
    }

    /// Like `collect`, and also passes the warnings on to the enclosing collector (or the
    /// process-wide list), whether `body` returns or throws: for library entry points that
    /// report their own warnings and must not hide them from their caller.
    package static func collectForwarding<T>(_ body: () throws -> T) throws -> (T, [String]) {
        let collector = Collector()
        defer { for message in collector.peek() { emit(message) } }
        let result = try $current.withValue(collector) { try body() }
        return (result, collector.peek())
    }

    /// Drains the warnings emitted while no collector was bound.
    public static func takeUnbound() -> [String] { unbound.take() }
}
