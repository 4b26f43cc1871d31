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

    public static func of(_ error: Error) -> ExitStatus {
        switch error {
        case let e as IOError:
            return e.isNotFound ? .noInput : .ioError
        case let e as SafetensorsError:
            if case let .io(io) = e { return io.isNotFound ? .noInput : .ioError }
            return .dataError
        case let e as PipelineError:
            switch e {
            case .outputExists, .outputIsInput: return .cannotCreate
            case .invalidArgument: return .usage
            case .unsupported: return .unsupported
            }
        case let e as any ClassifiedError:
            return e.exitStatus
        default:
            return .failure
        }
    }
}

/// Errors of later layers say which exit status they map to.
public protocol ClassifiedError: Error, CustomStringConvertible {
    var exitStatus: ExitStatus { get }
}

public enum OpConvertVersion {
    public static let string = "0.1.0"
}
