import OpConvertKit

// libFuzzer calls this once per input; the work and the checks live in OpConvertKit.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzEntryPoints.ggufFile(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
