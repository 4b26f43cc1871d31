import Foundation
import XCTest
@testable import OpConvertKit

/// One error policy (categories in the core, exit codes only in the umbrella), the POSIX
/// wrapper's errors, and the target layering.
final class ErrorPolicyAndLayeringTests: XCTestCase {
    struct Uncategorized: Error {}

    func testEveryCategoryMapsToItsSysexitsCode() {
        let expected: [ErrorCategory: Int32] = [
            .missingInput: 66, .malformedInput: 65, .unsupported: 69, .outputConflict: 73,
            .io: 74, .usage: 64, .internal: 1,
        ]
        XCTAssertEqual(Set(ErrorCategory.allCases), Set(expected.keys))
        for category in ErrorCategory.allCases {
            XCTAssertEqual(ExitStatus(category).rawValue, expected[category], "\(category)")
        }
    }

    func testLowerLayerErrorsKeepTheirExitCodes() throws {
        XCTAssertEqual(ExitStatus.of(IOError(path: "/x", operation: "open", code: ENOENT)), .noInput)
        XCTAssertEqual(ExitStatus.of(IOError(path: "/x", operation: "write", code: ENOSPC)), .ioError)
        XCTAssertEqual(ExitStatus.of(SafetensorsError.io(IOError(path: "/x", operation: "open", code: ENOENT))), .noInput)
        XCTAssertEqual(ExitStatus.of(SafetensorsError.headerNotUTF8(file: "/x")), .dataError)
        XCTAssertEqual(ExitStatus.of(PipelineError.outputExists("/x")), .cannotCreate)
        XCTAssertEqual(ExitStatus.of(PipelineError.outputIsInput("/x")), .cannotCreate)
        XCTAssertEqual(ExitStatus.of(PipelineError.invalidArgument("bad")), .usage)
        XCTAssertEqual(ExitStatus.of(PipelineError.unsupported("no")), .unsupported)
        XCTAssertThrowsError(try JSONParser.parse("{\"a\":")) { XCTAssertEqual(ExitStatus.of($0), .dataError) }
        XCTAssertEqual(ExitStatus.of(Uncategorized()), .failure)
        let classified: any ClassifiedError = InputError.notFound(path: "/x", expected: "a model")
        XCTAssertEqual(classified.exitStatus, .noInput)
    }

    func testIOErrorsNameThePathTheOperationAndErrno() throws {
        let dir = TestPaths.scratch(self)
        let missing = dir + "/absent.safetensors"
        XCTAssertThrowsError(try MappedFile(path: missing)) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.hasPrefix(missing + ": open failed: "), text)
            XCTAssertTrue(text.hasSuffix("(ENOENT)"), text)
            XCTAssertEqual(ExitStatus.of(error), .noInput)
        }
        XCTAssertThrowsError(try FileSystem.makeDirectory(dir)) { error in
            XCTAssertTrue(String(describing: error).contains("mkdir failed: ") && String(describing: error).hasSuffix("(EEXIST)"), "\(error)")
        }
        XCTAssertEqual(POSIX.errnoName(ENOSPC), "ENOSPC")
        XCTAssertEqual(POSIX.errnoName(EACCES), "EACCES")
        XCTAssertEqual(POSIX.errnoName(9999), "errno 9999")
    }

    func testWrapperWritesInPiecesAndReadsBack() throws {
        let path = TestPaths.scratch(self) + "/bytes.bin"
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let fd = try POSIX.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o644)
        // Small pieces: the loop, not one write, carries the data.
        try bytes.withUnsafeBytes { try POSIX.writeAll(fd, $0, path: path, piece: 333) }
        try POSIX.fsync(fd, path: path)
        XCTAssertTrue(POSIX.close(fd))
        let reader = try POSIX.open(path, O_RDONLY | O_CLOEXEC)
        defer { POSIX.close(reader) }
        XCTAssertEqual(try POSIX.fstat(reader, path: path).st_size, 10_000)
        let mapped = try MappedFile(path: path)
        withExtendedLifetime(mapped) { XCTAssertEqual(Array(mapped.bytes), bytes) }
        XCTAssertNil(POSIX.stat(path + ".none"))
        XCTAssertTrue(POSIX.unlink(path))
        XCTAssertFalse(FileSystem.exists(path))
    }

    /// Each library target imports only targets below it (scripts/check-layering.sh is the
    /// CI form of this check; SwiftPM refuses undeclared imports).
    func testLibraryTargetsImportOnlyLowerLayers() throws {
        let rank = ["OpConvertCore": 0, "OpConvertTensors": 1, "OpConvertAdapters": 2,
                    "OpConvertPipeline": 3, "OpConvertTraining": 3, "OpConvertKit": 4]
        var checkedFiles = 0
        for (target, level) in rank {
            let root = TestPaths.repoRoot + "/Sources/" + target
            let files = try XCTUnwrap(FileManager.default.enumerator(atPath: root)).compactMap { $0 as? String }
            for file in files where file.hasSuffix(".swift") {
                checkedFiles += 1
                let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ").map(String.init)
                    guard let i = words.firstIndex(of: "import"), i + 1 < words.count,
                          words[..<i].allSatisfy({ $0.hasPrefix("@") }),
                          let imported = rank[words[i + 1]], words[i + 1] != target else { continue }
                    XCTAssertLessThan(imported, level, "Sources/\(target)/\(file): imports \(words[i + 1])")
                }
            }
        }
        XCTAssertGreaterThan(checkedFiles, 50)
    }
}
