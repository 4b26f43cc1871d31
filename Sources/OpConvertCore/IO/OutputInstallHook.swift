/// A step run just before a finished output is renamed into place, bound for the duration
/// of one caller's work (a task-local, so concurrent batch jobs each see their own).
///
/// `opconvert batch` writes its completion record here: into a directory output's
/// temporary (so the record appears with the output, in the same rename) or beside a file
/// output. The hook runs on the thread that commits the output, which is the library
/// caller's thread (writers commit from it, never from their background threads).
package enum OutputInstallHook {
    /// The step, boxed: a task-local of a bare function type crashes optimized builds
    /// (swift_task_localValuePush gets no type metadata for it), a class reference does not.
    package final class Step: Sendable {
        let body: @Sendable (_ temporary: String, _ final: String, _ kind: OutputKind) throws -> Void
        package init(_ body: @escaping @Sendable (_ temporary: String, _ final: String, _ kind: OutputKind) throws -> Void) {
            self.body = body
        }
    }

    @TaskLocal package static var beforeInstall: Step?

    /// The file name of batch completion records inside directory outputs; existing outputs
    /// may hold it (it is one of the names --overwrite replaces).
    package static let batchRecordName = ".opconvert-batch.json"
}
