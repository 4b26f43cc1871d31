import OpConvertCore
import Foundation

/// `train --demo`: the bundled tiny network and dataset (fixtures/train, made by
/// fixtures/scripts/make_train_demo.py), found beside an installed binary
/// (PREFIX/share/opconvert/train-demo) or in the source tree the binary was built in.
public enum TrainDemo {
    public static let baseName = "base.safetensors"
    public static let dataName = "data.safetensors"

    public struct NotFound: CategorizedError {
        public var searched: [String]
        public var category: ErrorCategory { .missingInput }
        public var description: String {
            "train --demo: the bundled demo network (\(TrainDemo.baseName), \(TrainDemo.dataName)) was not found; looked in "
                + searched.joined(separator: ", ") + " (scripts/install.sh installs it into PREFIX/share/opconvert/train-demo)"
        }
    }

    /// The directories searched, in order: PREFIX/share/opconvert/train-demo for each
    /// ancestor PREFIX of the resolved executable, then fixtures/train under each ancestor
    /// (a build inside the repository), then ./fixtures/train.
    public static func searchDirectories() -> [String] {
        var exe = Bundle.main.executablePath ?? CommandLine.arguments.first ?? ""
        #if os(Linux)
        if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { exe = link }
        #endif
        var ancestors: [String] = []
        var dir = (FileSystem.absolute(exe) as NSString).deletingLastPathComponent
        while !dir.isEmpty && ancestors.count < 6 {
            ancestors.append(dir)
            if dir == "/" { break }
            dir = (dir as NSString).deletingLastPathComponent
        }
        let cwd = FileManager.default.currentDirectoryPath
        return ancestors.map { FileSystem.join($0, "share/opconvert/train-demo") }
            + ancestors.map { FileSystem.join($0, "fixtures/train") } + [FileSystem.join(cwd, "fixtures/train")]
    }

    /// The demo's base network and dataset paths.
    public static func locate() throws -> (base: String, data: String) {
        let dirs = searchDirectories()
        for dir in dirs {
            let base = FileSystem.join(dir, baseName), data = FileSystem.join(dir, dataName)
            if FileManager.default.fileExists(atPath: base) && FileManager.default.fileExists(atPath: data) { return (base, data) }
        }
        throw NotFound(searched: dirs)
    }
}
