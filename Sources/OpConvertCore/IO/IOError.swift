#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call, with the path it was working on.
public struct IOError: CategorizedError, Sendable, Equatable {
    public var path: String
    public var operation: String
    public var code: Int32

    public init(path: String, operation: String, code: Int32 = errno) {
        // The user's path, not the temporary one an output is written under.
        self.path = TemporaryPaths.userFacing(path)
        self.operation = operation
        self.code = code
    }

    public var description: String {
        "\(path): \(operation) failed: \(String(cString: strerror(code))) (\(POSIX.errnoName(code)))"
    }

    public var isNotFound: Bool { code == ENOENT }

    public var category: ErrorCategory { isNotFound ? .missingInput : .io }
}
