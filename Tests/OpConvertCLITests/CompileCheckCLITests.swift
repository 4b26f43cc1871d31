import Foundation
import XCTest

/// `plugin check --device cuda --compile-only` is CI's guard that every CUDA kernel compiles:
/// where NVRTC cannot be found it must fail, not pass with nothing compiled.
final class CompileCheckCLITests: XCTestCase {
    func testCompileCheckFailsWhenNVRTCIsMissing() throws {
        // Hide every place the plugin looks for NVRTC but the system loader.
        let hidden = ["OPCONVERT_CUDA_LIBRARY_PATH": "/nonexistent", "HOME": "/nonexistent", "PYENV_ROOT": "/nonexistent",
                      "PATH": "/usr/bin:/bin", "VIRTUAL_ENV": nil, "CONDA_PREFIX": nil] as [String: String?]
        var saved: [String: String?] = [:]
        for (key, value) in hidden {
            saved[key] = ProcessInfo.processInfo.environment[key]
            if let value { setenv(key, value, 1) } else { unsetenv(key) }
        }
        defer {
            for (key, value) in saved {
                if let value { setenv(key, value, 1) } else { unsetenv(key) }
            }
        }
        let r = try runOpconvert(["plugin", "check", "--device", "cuda", "--compile-only"])
        if r.status == 0 && r.stdout.contains("ok   compile_kernels") {
            throw XCTSkip("the system loader finds NVRTC on this machine")
        }
        XCTAssertEqual(r.status, 1, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("FAIL compile_kernels sm_80") && r.stdout.contains("libnvrtc.so"), r.stdout)
        XCTAssertTrue(r.stdout.hasSuffix("0 passed, 2 failed\n"), r.stdout)
    }
}
