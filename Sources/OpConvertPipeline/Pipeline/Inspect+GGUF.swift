import Foundation
import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

extension Inspector {
    /// `inspect --verify` of a GGUF file: reads every tensor's bytes and counts NaN/Inf values
    /// of the float tensors (quantized ones are read, not decoded).
    static func verifyGGUF(_ report: inout InspectReport, path: String) throws -> (seconds: Double, bytes: Int) {
        let file = try GGUFFile(path: path)
        let started = Date()
        var total = 0, bad = 0
        var counts: [String: Int] = [:]
        for t in file.tensors {
            let data = file.data(t)
            if let dtype = t.type.dtype {
                let n = TensorScan.nonFinite(data, dtype, count: t.elementCount)
                counts[t.name] = n
                bad += n ?? 0
            } else {
                // Touch every byte, so that unreadable data shows up here too.
                var x: UInt8 = 0
                for b in data { x ^= b }
                _ = x
            }
            total += t.byteCount
        }
        try MappedFile.checkAllIntact()
        let seconds = Date().timeIntervalSince(started)
        for i in report.tensors.indices { report.tensors[i].nonFinite = counts[report.tensors[i].name] }
        var d = report.details ?? [:]
        d["verified"] = "\(report.tensors.count) tensors, \(formatBytes(total)) read in \(String(format: "%.3f", seconds)) s, \(bad) NaN/Inf values"
        report.details = d
        return (seconds, total)
    }
}
