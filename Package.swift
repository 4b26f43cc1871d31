// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "opconvert",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "opconvert", targets: ["opconvert"]),
        .library(name: "OpConvertKit", targets: ["OpConvertKit"]),
        // The default kernel plugin, loaded at run time (dlopen) from next to the executable.
        .library(name: "OpConvertCPUPlugin", type: .dynamic, targets: ["OpConvertCPUPlugin"]),
        // The CUDA kernel plugin: builds with no CUDA toolkit (the CUDA libraries are dlopen'ed).
        .library(name: "OpConvertCUDAPlugin", type: .dynamic, targets: ["OpConvertCUDAPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries, found through pkg-config; apt names the -dev package to install.
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CJSONC", path: "Sources/CJSONC", pkgConfig: "json-c",
                       providers: [.apt(["libjson-c-dev"])]),
        // Hot loops in C: dtype conversion with run-time SIMD dispatch, scans, and the few
        // Linux I/O calls Swift cannot reach (sync_file_range).
        // No unsafeFlags anywhere, so OpConvertKit can be a package dependency: release builds
        // get SwiftPM's -O level, and the SIMD paths are chosen at run time in the source.
        .target(name: "COpConvertKernels", path: "Sources/COpConvertKernels"),
        // Kernel plugin C ABI (header only; abi.c makes it a module Swift can import).
        .target(name: "COpConvertPluginABI", path: "Sources/COpConvertPluginABI"),
        // CPU kernel plugin on OpenBLAS; built as the dynamic library product above.
        .target(name: "OpConvertCPUPlugin", dependencies: ["COpenBLAS", "COpConvertPluginABI"],
                // Only opc_plugin_entry is exported (#pragma GCC visibility in the sources).
                path: "Sources/OpConvertCPUPlugin"),
        // CUDA kernel plugin: driver API, NVRTC and cuBLAS through dlopen, kernels compiled at
        // run time from kernels/opc_kernels.cu (embedded as opc_kernels_source.inc).
        .target(name: "OpConvertCUDAPlugin", dependencies: ["COpConvertPluginABI"],
                path: "Sources/OpConvertCUDAPlugin", exclude: ["kernels"],
                linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux])),
                                 .linkedLibrary("pthread", .when(platforms: [.linux]))]),
        // The library in layers; each depends only on the ones above it here, so the compiler
        // keeps the layering (docs/architecture.md, scripts/check-layering.sh).
        // Core: errors, I/O, JSON, dtypes and conversion kernels.
        .target(name: "OpConvertCore", dependencies: ["CJSONC", "COpConvertKernels"],
                path: "Sources/OpConvertCore"),
        // Tensor sets: safetensors (.zst too), models, model writing.
        .target(name: "OpConvertTensors", dependencies: ["OpConvertCore", "CZstd"],
                path: "Sources/OpConvertTensors"),
        // Adapter formats: PEFT LoRA/DoRA, OP checkpoints, module name resolution.
        .target(name: "OpConvertAdapters", dependencies: ["OpConvertCore", "OpConvertTensors", "COpenBLAS", "COpConvertKernels"],
                path: "Sources/OpConvertAdapters"),
        // The commands: merge, convert, inspect, materialize.
        .target(name: "OpConvertPipeline",
                dependencies: ["OpConvertCore", "OpConvertTensors", "OpConvertAdapters", "COpenBLAS", "COpConvertKernels"],
                path: "Sources/OpConvertPipeline"),
        // Kernel plugins, adapter training and the transformer trainer.
        .target(name: "OpConvertTraining",
                dependencies: ["OpConvertCore", "OpConvertTensors", "OpConvertAdapters", "COpenBLAS",
                               "COpConvertPluginABI"],
                path: "Sources/OpConvertTraining"),
        // The umbrella the executable and tests import; the only place errors become exit codes.
        .target(
            name: "OpConvertKit",
            dependencies: ["OpConvertCore", "OpConvertTensors", "OpConvertAdapters", "OpConvertPipeline",
                           "OpConvertTraining"],
            path: "Sources/OpConvertKit"
        ),
        .executableTarget(
            name: "opconvert",
            dependencies: [
                "OpConvertKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/opconvert"
        ),
        .testTarget(name: "OpConvertKitTests", dependencies: ["OpConvertKit", "COpConvertKernels"],
                    path: "Tests/OpConvertKitTests"),
        .testTarget(name: "OpConvertCLITests", dependencies: ["OpConvertKit", "opconvert"],
                    path: "Tests/OpConvertCLITests"),
    ],
    swiftLanguageModes: [.v6]
)
