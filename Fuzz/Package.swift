// swift-tools-version:6.0
// libFuzzer harnesses for opconvert's input parsers: a package of its own so that the main
// package keeps its flags. Build and run with scripts/fuzz.sh (swift build -c release
// --sanitize=fuzzer --sanitize=address); a plain `swift build` here cannot link (no main).
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its directory, which is wherever the repository
// was cloned; products are looked up by that name.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let rootIdentity = root.lastPathComponent.lowercased()

let harnesses = ["header", "file", "adapter_config", "op_config", "shard_index", "key_map", "gguf"]

let package = Package(
    name: "opconvert-fuzz",
    dependencies: [.package(path: "..")],
    targets: harnesses.map { name in
        .executableTarget(name: "fuzz_\(name)",
                          dependencies: [.product(name: "OpConvertKit", package: rootIdentity)],
                          path: "Sources/fuzz_\(name)")
    },
    swiftLanguageModes: [.v6]
)
