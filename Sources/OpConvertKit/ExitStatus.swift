/// The documented exit codes (sysexits.h values, so scripts can tell failures apart).
public enum ExitStatus: Int32, CaseIterable, Sendable {
    case success = 0
    /// An unexpected internal failure.
    case failure = 1
    /// Bad command line (the argument parser's own code).
    case usage = 64
    /// An input is malformed or inconsistent (bad file, unmatched adapter module, ...).
    case dataError = 65
    /// An input does not exist or cannot be opened.
    case noInput = 66
    /// A valid input uses something opconvert cannot do (unmergeable variant, ...).
    case unsupported = 69
    /// The output cannot be created (exists without --overwrite, would replace the input).
    case cannotCreate = 73
    /// Reading or writing failed (disk full, permissions, ...).
    case ioError = 74

    /// The one place error categories become exit codes.
    public init(_ category: ErrorCategory) {
        switch category {
        case .missingInput: self = .noInput
        case .malformedInput: self = .dataError
        case .unsupported: self = .unsupported
        case .outputConflict: self = .cannotCreate
        case .io: self = .ioError
        case .usage: self = .usage
        case .internal: self = .failure
        }
    }

    public static func of(_ error: Error) -> ExitStatus {
        guard let categorized = error as? any CategorizedError else { return .failure }
        return ExitStatus(categorized.category)
    }
}

/// The name the CLI and tests have used for categorized errors.
public typealias ClassifiedError = CategorizedError

extension CategorizedError {
    public var exitStatus: ExitStatus { ExitStatus(category) }
}

public enum OpConvertVersion {
    public static let string = "0.1.0"
}
