/// What kind of failure an error is. Every opconvert error type has one; only the CLI layer
/// (OpConvertKit's ExitStatus) turns categories into exit codes.
public enum ErrorCategory: Sendable, Equatable, CaseIterable {
    /// An input does not exist or cannot be opened.
    case missingInput
    /// An input is malformed or inconsistent.
    case malformedInput
    /// A valid input asks for something opconvert cannot do.
    case unsupported
    /// The output cannot be created (exists, would replace an input).
    case outputConflict
    /// Reading or writing failed (disk full, permissions, ...).
    case io
    /// A bad argument or option.
    case usage
    /// An unexpected internal failure.
    case `internal`
}

/// An opconvert error: a one-line description naming the file/tensor/module, and a category.
public protocol CategorizedError: Error, CustomStringConvertible {
    var category: ErrorCategory { get }
}
