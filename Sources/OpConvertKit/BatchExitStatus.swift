import OpConvertCore
import OpConvertPipeline

extension BatchJobResult {
    /// 0 when it ran or was skipped; 128 + the signal when an interrupt stopped it or came
    /// before it started; else its error's documented exit status.
    public var exitCode: Int32 {
        guard let error else { return 0 }
        if let i = error as? Interrupted { return 128 + i.signal }
        if case let .notStarted(sig)? = error as? BatchError { return 128 + sig }
        return ExitStatus.of(error).rawValue
    }
}

extension BatchSummary {
    /// 0 only if every job succeeded or was skipped; 128 + the signal after an interrupt;
    /// else the failing jobs' exit status when they all share one, and 1 when they differ.
    public var exitCode: Int32 {
        if let interrupted { return 128 + interrupted }
        let codes = Set(results.map(\.exitCode).filter { $0 != 0 })
        if codes.isEmpty { return 0 }
        if codes.count == 1, let only = codes.first { return only }
        return ExitStatus.failure.rawValue
    }
}
