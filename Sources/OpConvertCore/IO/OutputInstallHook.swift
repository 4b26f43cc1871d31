/// A step run just before a finished output is renamed into place, bound for the duration
/// of one caller's work (a task-local, so concurrent batch jobs each see their own).
///
/// `opconvert batch` writes its completion record here: into a directory output's
/// temporary (so the record appears with the output, in the same rename) or beside a file
/// output. The hook runs on the thread that commits the output, which is the library
/// caller's thread (writers commit from it, never from their background threads).
package enum OutputInstallHook {
    package typealias Step = @Sendable (_ temporary: String, _ final: String, _ kind: OutputKind) throws -> Void

    @TaskLocal package static var beforeInstall: Step?

    /// The file name of batch completion records inside directory outputs; existing outputs
    /// may hold it (it is one of the names --overwrite replaces).
    package static let batchRecordName = ".opconvert-batch.json"
}
