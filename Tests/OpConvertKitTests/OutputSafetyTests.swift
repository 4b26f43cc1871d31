import Foundation
import XCTest
@testable import OpConvertKit

/// The output rule (OutputGuard): outputs never are, hold or lie in an input; --overwrite
/// replaces only what opconvert writes; replacement is atomic; stale temporaries go.
/// Destructive cases run on copies of the fixtures, with checksums before and after.
final class OutputSafetyTests: XCTestCase {
    /// A scratch directory holding copies of the LLaMA fixture base and its LoRA adapter.
    func workspace() throws -> (dir: String, base: String, adapter: String) {
        let dir = TestPaths.scratch(self)
        try FileManager.default.copyItem(atPath: TestPaths.fixture("peft/models/llama"), toPath: dir + "/base")
        try FileManager.default.copyItem(atPath: TestPaths.fixture("peft/adapters/llama_lora"), toPath: dir + "/ad")
        return (dir, dir + "/base", dir + "/ad")
    }

    /// Path -> SHA-256 of every regular file below `dir` (links not followed).
    func checksums(_ dir: String) -> [String: String] {
        var sums: [String: String] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let rel = e?.nextObject() as? String {
            let p = dir + "/" + rel
            guard FileSystem.isRegularFile(p), !FileSystem.isSymbolicLink(p) else { continue }
            let bytes = readBytes(p)
            sums[rel] = bytes.withUnsafeBytes { sha256Hex($0) }
        }
        return sums
    }

    func merge(_ base: String, _ adapter: String, to output: String, overwrite: Bool = true) throws -> MergeSummary {
        try Merger.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: output, overwrite: overwrite, showProgress: false))
    }

    func assertRefused(_ body: @autoclosure () throws -> Any, _ expected: String..., file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertEqual(ExitStatus.of(error), .cannotCreate, "\(error)", file: file, line: line)
            for s in expected { XCTAssertTrue("\(error)".contains(s), "\(error) should mention \(s)", file: file, line: line) }
        }
    }

    func testTheIssuesDestructiveCasesAreRefusedAndInputsUntouched() throws {
        let (dir, base, ad) = try workspace()
        let before = checksums(dir)
        assertRefused(try merge(base, ad, to: ad), "is the input", ad)                 // output = adapter
        assertRefused(try merge(base, ad, to: dir), "would hold the input")            // parent of both
        assertRefused(try merge(base, ad, to: base + "/sub"), "inside the input", base) // inside the base
        assertRefused(try merge(base, ad, to: base + "/model-00001-of-00003.safetensors"), "is the input")   // a shard
        assertRefused(try merge(base, ad, to: ad + "/adapter_model.safetensors"), "inside the input", ad)
        assertRefused(try Converter.run(ConvertOptions(input: base, output: base + "/x.safetensors", overwrite: true)), "inside the input")
        try FileManager.default.copyItem(atPath: TestPaths.fixture("op/checkpoints/op_lora_f32"), toPath: dir + "/op")
        let withOP = checksums(dir)
        assertRefused(try Materializer.run(MaterializeOptions(checkpoint: dir + "/op", output: dir + "/op", overwrite: true)), "is the input")
        assertRefused(try Materializer.run(MaterializeOptions(checkpoint: dir + "/op", output: dir + "/base", base: dir + "/base", overwrite: true)), "is the input")
        XCTAssertEqual(checksums(dir), withOP)
        try FileManager.default.removeItem(atPath: dir + "/op")
        XCTAssertEqual(checksums(dir), before)
    }

    func testLinksAreResolved() throws {
        let (dir, base, ad) = try workspace()
        let before = checksums(dir)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link-to-ad", withDestinationPath: ad)
        assertRefused(try merge(base, ad, to: dir + "/link-to-ad"), "is the input")
        // A hard link to the base's weights is the base's weights.
        XCTAssertEqual(link(base + "/model-00001-of-00003.safetensors", dir + "/hard.safetensors"), 0)
        assertRefused(try Converter.run(ConvertOptions(input: base, output: dir + "/hard.safetensors", overwrite: true)), "is the input")
        // Through a symlinked parent: the output lies inside the base.
        try FileManager.default.createSymbolicLink(atPath: dir + "/base-link", withDestinationPath: base)
        assertRefused(try merge(base, ad, to: dir + "/base-link/out"), "inside the input")
        XCTAssertEqual(checksums(dir).filter { $0.key != "hard.safetensors" }, before)
    }

    func testOverwriteReplacesOnlyWhatOpconvertWrites() throws {
        let (dir, base, ad) = try workspace()
        // A directory with someone else's file is refused, the file named, nothing deleted.
        try FileManager.default.createDirectory(atPath: dir + "/mine", withIntermediateDirectories: false)
        writeFile(dir + "/mine/notes.txt", Array("keep me".utf8))
        writeFile(dir + "/mine/config.json", Array("{}".utf8))
        assertRefused(try merge(base, ad, to: dir + "/mine"), "notes.txt")
        XCTAssertEqual(readBytes(dir + "/mine/notes.txt"), Array("keep me".utf8))
        // A subdirectory is not something opconvert writes either.
        try FileManager.default.createDirectory(atPath: dir + "/nested/sub", withIntermediateDirectories: true)
        assertRefused(try merge(base, ad, to: dir + "/nested"), "sub")
        // Special files and links are never replaced.
        XCTAssertEqual(mkfifo(dir + "/fifo", 0o644), 0)
        assertRefused(try merge(base, ad, to: dir + "/fifo"), "FIFO")
        XCTAssertEqual(mkfifo(dir + "/fifo.safetensors", 0o644), 0)
        assertRefused(try merge(base, ad, to: dir + "/fifo.safetensors"), "FIFO")
        writeFile(dir + "/target.bin", [1, 2, 3])
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.safetensors", withDestinationPath: dir + "/target.bin")
        assertRefused(try merge(base, ad, to: dir + "/link.safetensors"), "symbolic link")
        // A file that is not a safetensors file is not replaced by one.
        writeFile(dir + "/text.safetensors", Array("hello".utf8))
        assertRefused(try merge(base, ad, to: dir + "/text.safetensors"), "not a safetensors file")
        XCTAssertEqual(readBytes(dir + "/text.safetensors"), Array("hello".utf8))
        // A file where a directory output goes, and a directory where a file output goes.
        writeFile(dir + "/plain", [0])
        assertRefused(try merge(base, ad, to: dir + "/plain"), "not a directory")
        try FileManager.default.createDirectory(atPath: dir + "/d.safetensors", withIntermediateDirectories: false)
        assertRefused(try merge(base, ad, to: dir + "/d.safetensors"), "a directory")
        if mknod(dir + "/null", S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0 {   // root only
            assertRefused(try Converter.run(ConvertOptions(input: base, output: dir + "/null", overwrite: true)), "character device")
            var st = stat()
            XCTAssertEqual(lstat(dir + "/null", &st), 0)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR)
        }
        // The current directory, and home, are never replaced.
        assertRefused(try merge(base, ad, to: FileManager.default.currentDirectoryPath), "current directory")
    }

    func testOverwriteOfAPreviousOutputIsAtomicAndLeavesNothing() throws {
        let (dir, base, ad) = try workspace()
        _ = try merge(base, ad, to: dir + "/out", overwrite: false)
        assertRefused(try merge(base, ad, to: dir + "/out", overwrite: false), "already exists", "--overwrite")
        let first = checksums(dir + "/out")
        // A different output (f32) replaces the old one whole.
        _ = try Merger.run(MergeOptions(base: base, adapters: [(ad, 1)], output: dir + "/out", dtype: .f32, overwrite: true, showProgress: false))
        XCTAssertNotEqual(checksums(dir + "/out"), first)
        XCTAssertEqual(try FileSystem.list(dir).filter { $0.contains("opconvert") }, [], "no temporaries or old outputs left")
        // Same for single-file outputs.
        _ = try merge(base, ad, to: dir + "/one.safetensors", overwrite: false)
        _ = try merge(base, ad, to: dir + "/one.safetensors", overwrite: true)
        XCTAssertEqual(try FileSystem.list(dir).filter { $0.contains("opconvert") }, [])
    }

    func testParentsAreCreatedAndRemovedOnFailure() throws {
        let (dir, base, ad) = try workspace()
        _ = try merge(base, ad, to: dir + "/a/b/c", overwrite: false)
        XCTAssertTrue(FileSystem.isRegularFile(dir + "/a/b/c/model.safetensors"))
        // A failing run leaves no parents it created behind.
        let bad = dir + "/bad"
        try FileManager.default.copyItem(atPath: ad, toPath: bad)
        writeFile(bad + "/adapter_model.safetensors", Array("garbage!".utf8))
        XCTAssertThrowsError(try merge(base, bad, to: dir + "/x/y/z", overwrite: false))
        XCTAssertFalse(FileSystem.exists(dir + "/x"))
        // A parent that is a file is an output error naming it.
        writeFile(dir + "/file", [0])
        assertRefused(try merge(base, ad, to: dir + "/file/out"), dir + "/file")
    }

    /// A pid that no process has now.
    func deadPid() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }

    func testStaleTemporariesOfDeadRunsAreCleanedAndSaid() throws {
        let (dir, base, ad) = try workspace()
        let pid = try deadPid()
        let staleDir = dir + "/.out.opconvert-tmp-\(pid)-42"
        try FileManager.default.createDirectory(atPath: staleDir, withIntermediateDirectories: false)
        writeFile(staleDir + "/model.safetensors", [0, 1, 2])
        let staleFile = dir + "/.one.safetensors.opconvert-tmp-\(pid)-7"
        writeFile(staleFile, [0])
        // A live process's temporary (ours) is left alone.
        let live = dir + "/.out.opconvert-tmp-1-5"
        writeFile(live, [0])
        let (_, warnings) = try Warnings.collect { try merge(base, ad, to: dir + "/out", overwrite: false) }
        XCTAssertFalse(FileSystem.exists(staleDir))
        XCTAssertTrue(FileSystem.exists(live))
        XCTAssertTrue(warnings.contains { $0.contains(staleDir) && $0.contains("\(pid)") }, "\(warnings)")
        _ = try merge(base, ad, to: dir + "/one.safetensors", overwrite: false)
        XCTAssertFalse(FileSystem.exists(staleFile))
        // An old output moved aside by a run that died before its new one was in place is put back.
        try FileManager.default.moveItem(atPath: dir + "/out", toPath: dir + "/.out.opconvert-old-\(pid)")
        let before = checksums(dir + "/.out.opconvert-old-\(pid)")
        let (_, w2) = try Warnings.collect { try merge(base, ad, to: dir + "/out2", overwrite: false) }
        XCTAssertTrue(FileSystem.exists(dir + "/.out.opconvert-old-\(pid)"), "only temporaries of this output's name are touched")
        XCTAssertTrue(w2.isEmpty, "\(w2)")
        _ = try Warnings.collect { try merge(base, ad, to: dir + "/out", overwrite: true) }
        XCTAssertFalse(FileSystem.exists(dir + "/.out.opconvert-old-\(pid)"))
        XCTAssertEqual(checksums(dir + "/out"), before)
    }

    func testTemporaryNamesParse() {
        XCTAssertEqual(TemporaryName.parse(".out.opconvert-tmp-123-456", output: "out")?.pid, 123)
        XCTAssertEqual(TemporaryName.parse(".out.opconvert-old-77", output: "out")?.old, true)
        XCTAssertNil(TemporaryName.parse(".out2.opconvert-tmp-123-456", output: "out"))
        XCTAssertNil(TemporaryName.parse(".out.opconvert-tmp-x-1", output: "out"))
        let t = TemporaryName.temporary(for: "/a/b/model")
        XCTAssertTrue(t.hasPrefix("/a/b/.model.opconvert-tmp-\(getpid())-"), t)
    }

    func testErrorsNameTheUsersPathNotTheTemporary() throws {
        let dir = TestPaths.scratch(self)
        let out = try OutputDirectory(path: dir + "/result", policy: OutputPolicy())
        let error = IOError(path: out.path("model.safetensors"), operation: "write", code: ENOSPC)
        XCTAssertEqual(error.path, dir + "/result/model.safetensors")
        XCTAssertFalse("\(error)".contains("opconvert-tmp"), "\(error)")
    }

    func testInterruptedWorkStopsAtTheNextWriteAndRemovesItsTemporary() throws {
        let (dir, base, ad) = try workspace()
        Interrupts.simulate(SIGINT)
        defer { Interrupts.simulate(0) }
        XCTAssertThrowsError(try merge(base, ad, to: dir + "/out", overwrite: false)) { error in
            XCTAssertEqual((error as? Interrupted)?.signal, SIGINT, "\(error)")
        }
        XCTAssertEqual(try FileSystem.list(dir), ["ad", "base"], "no output, no temporary")
    }

    func testTrainingOutputsFollowTheRule() throws {
        let dir = TestPaths.scratch(self)
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        let w: [Float] = [1, 0, 0, 1], b: [Float] = [0, 0]
        try SafetensorsWriter.write(path: base, tensors: [(TensorSpec(name: "l.weight", dtype: .f32, shape: [2, 2]), w.bytes),
                                                         (TensorSpec(name: "l.bias", dtype: .f32, shape: [2]), b.bytes)], metadata: nil)
        let x: [Float] = [1, 0, 0, 1]
        var labels: [UInt8] = []
        for v in [Int64(0), 1] { withUnsafeBytes(of: v.littleEndian) { labels += $0 } }
        try SafetensorsWriter.write(path: data, tensors: [(TensorSpec(name: "inputs", dtype: .f32, shape: [2, 2]), x.bytes),
                                                         (TensorSpec(name: "labels", dtype: .i64, shape: [2]), labels)], metadata: nil)
        let before = checksums(dir)
        var o = TrainOptions(base: base, data: data)
        o.method = .lora
        o.rank = 1
        o.batchSize = 2
        o.output = data
        o.overwrite = true
        assertRefused(try Trainer(options: o).run(), "is the input")
        o.output = dir + "/adapter"
        o.lossCSV = base
        assertRefused(try Trainer(options: o).run(), "is the input")
        o.lossCSV = dir + "/adapter/loss.csv"
        assertRefused(try Trainer(options: o).run(), "inside another output")
        XCTAssertEqual(checksums(dir), before)
        // A CSV never replaces a binary file.
        writeFile(dir + "/blob.csv", [0, 159, 146, 150])
        o.lossCSV = dir + "/blob.csv"
        assertRefused(try Trainer(options: o).run(), "binary")
        o.lossCSV = dir + "/loss.csv"
        _ = try Trainer(options: o).run()
        XCTAssertTrue(FileSystem.isRegularFile(dir + "/adapter/adapter_config.json"))
        XCTAssertTrue(FileSystem.isRegularFile(dir + "/loss.csv"))
        // A sweep directory is an output like any other.
        try FileManager.default.createDirectory(atPath: dir + "/sweep", withIntermediateDirectories: false)
        writeFile(dir + "/sweep/mine.txt", [1])
        o.output = nil
        o.lossCSV = nil
        assertRefused(try LRSweep.run(base: o, methods: [.lora], lrs: [1e-3], outputDirectory: dir + "/sweep"), "mine.txt")
        _ = try LRSweep.run(base: o, methods: [.lora], lrs: [1e-3], outputDirectory: dir + "/sweep2")
        XCTAssertEqual(try FileSystem.list(dir + "/sweep2"), ["sweep.csv", "sweep.md", "sweep.svg"])
    }
}
