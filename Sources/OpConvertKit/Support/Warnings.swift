import Foundation

/// Warnings: surprises that are not errors (a weight of 0, PEFT defaults used, a stale
/// temporary removed). Library code emits them; whoever runs a command collects them for
/// the text output and the JSON `warnings`.
public final class WarningCollector: @unchecked Sendable {
    // Guarded by `lock`: emitted from any thread.
    private let lock = NSLock()
    private var messages: [String] = []

    public init() {}

    public func add(_ message: String) {
        lock.withLock { if !messages.contains(message) { messages.append(message) } }
    }

    public func drain() -> [String] {
        lock.withLock {
            defer { messages.removeAll() }
            return messages
        }
    }
}

public enum Warnings {
    @TaskLocal static var current: WarningCollector?
    /// Where warnings go when no collector is bound (the executable drains it).
    public static let process = WarningCollector()

    public static func emit(_ message: String) {
        (current ?? process).add(message)
    }

    /// Runs `body` with its own collector and returns what it emitted.
    public static func collect<T>(_ body: () throws -> T) rethrows -> (T, [String]) {
        let collector = WarningCollector()
        let value = try $current.withValue(collector) { try body() }
        return (value, collector.drain())
    }
}
