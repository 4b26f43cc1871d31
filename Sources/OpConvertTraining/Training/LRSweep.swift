import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// `train --lr-sweep`: final training loss against learning rate for several methods (the
/// paper's Figure 2a), as a CSV, a Markdown table and an SVG plot.
public struct SweepResult: Codable, Sendable {
    public struct Point: Codable, Sendable {
        public var method: AdapterMethod
        public var lr: Double
        public var finalLoss: Double
        public var finalAccuracy: Double
        public var secondsPerEpoch: Double
    }
    public var points: [Point]
    public var files: [String]
    /// Where the runs ran ("cpu", "cuda:0 (...)").
    public var device: String = ""
}

public enum LRSweep {
    /// `onDevice` hears the device chosen for the first run (every run uses it).
    public static func run(base: TrainOptions, methods: [AdapterMethod], lrs: [Double], outputDirectory: String,
                           onDevice: (SelectedDevice) -> Void = { _ in }) throws -> SweepResult {
        let policy = OutputPolicy(overwrite: base.overwrite, inputs: [base.base, base.data] + (base.plugin.map { [$0] } ?? []))
        let files = ["sweep.csv", "sweep.md", "sweep.svg"]
        try OutputGuard.check(outputDirectory, kind: .directory, policy: policy, names: files)
        var points: [SweepResult.Point] = []
        var device: SelectedDevice?
        for method in methods {
            for lr in lrs {
                var o = base
                o.method = method
                o.lr = lr
                o.output = nil
                o.lossCSV = nil
                let summary: TrainSummary
                do {
                    let trainer = try Trainer(options: o, device: device)
                    if device == nil { onDevice(trainer.device) }
                    device = trainer.device
                    summary = try trainer.run()
                } catch TrainError.diverged {
                    points.append(.init(method: method, lr: lr, finalLoss: .infinity, finalAccuracy: 0, secondsPerEpoch: 0))
                    continue
                }
                points.append(.init(method: method, lr: lr, finalLoss: summary.finalLoss, finalAccuracy: summary.finalAccuracy,
                                    secondsPerEpoch: summary.secondsPerEpoch))
            }
        }
        var csv = "method,lr,final_loss,final_accuracy,seconds_per_epoch\n"
        for p in points { csv += "\(p.method.rawValue),\(p.lr),\(p.finalLoss),\(p.finalAccuracy),\(p.secondsPerEpoch)\n" }
        var md = "| lr | " + methods.map(\.rawValue).joined(separator: " | ") + " |\n|---|" + methods.map { _ in "---|" }.joined() + "\n"
        for lr in lrs {
            md += "| \(lr) | " + methods.map { m in
                points.first { $0.method == m && $0.lr == lr }.map { String(format: "%.4f", $0.finalLoss) } ?? "-"
            }.joined(separator: " | ") + " |\n"
        }
        let dir = try OutputDirectory(path: outputDirectory, policy: policy, names: files)
        for (name, text) in zip(files, [csv, md, svg(points: points, methods: methods, lrs: lrs)]) {
            let f = try OutputFile(path: dir.path(name))
            try f.write(Array(text.utf8))
            try f.commit(sync: true)
        }
        try dir.commit()
        return SweepResult(points: points, files: files.map { FileSystem.join(outputDirectory, $0) }, device: device?.label ?? "")
    }

    /// Final loss (y) against learning rate (x, log scale), one line per method.
    static func svg(points: [SweepResult.Point], methods: [AdapterMethod], lrs: [Double]) -> String {
        let w = 640.0, h = 400.0, left = 70.0, right = 150.0, top = 30.0, bottom = 50.0
        let finite = points.map(\.finalLoss).filter(\.isFinite).sorted()
        // A run that blew up (huge but finite loss) would flatten every other point: cap the
        // axis at 3x the median and draw such points on the top edge.
        let median = finite.isEmpty ? 1 : finite[finite.count / 2]
        let yMax = min(finite.last ?? 1, 3 * max(median, 1e-12)) * 1.05, yMin = min(0, finite.first ?? 0)
        let xs = lrs.map(log10)
        let xMin = (xs.min() ?? 0) - 0.2, xMax = (xs.max() ?? 1) + 0.2
        func px(_ lr: Double) -> Double { left + (log10(lr) - xMin) / (xMax - xMin) * (w - left - right) }
        func py(_ y: Double) -> Double { top + (1 - (min(y, yMax) - yMin) / max(yMax - yMin, 1e-12)) * (h - top - bottom) }
        let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(h - bottom)\" x2=\"\(w - right)\" y2=\"\(h - bottom)\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(h - bottom)\" stroke=\"black\"/>\n"
        for lr in lrs {
            s += "<text x=\"\(px(lr))\" y=\"\(h - bottom + 18)\" text-anchor=\"middle\">\(lr)</text>\n"
        }
        for k in 0...4 {
            let y = yMin + Double(k) / 4 * (yMax - yMin)
            s += "<text x=\"\(left - 8)\" y=\"\(py(y) + 4)\" text-anchor=\"end\">\(String(format: "%.3f", y))</text>\n"
            s += "<line x1=\"\(left)\" y1=\"\(py(y))\" x2=\"\(w - right)\" y2=\"\(py(y))\" stroke=\"#ddd\"/>\n"
        }
        s += "<text x=\"\((left + w - right) / 2)\" y=\"\(h - 10)\" text-anchor=\"middle\">learning rate (log scale)</text>\n"
        s += "<text x=\"16\" y=\"\((top + h - bottom) / 2)\" transform=\"rotate(-90 16 \((top + h - bottom) / 2))\" text-anchor=\"middle\">final train loss</text>\n"
        for (i, m) in methods.enumerated() {
            let c = colors[i % colors.count]
            let pts = points.filter { $0.method == m && $0.finalLoss.isFinite }.sorted { $0.lr < $1.lr }
            s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"" + pts.map { "\(px($0.lr)),\(py($0.finalLoss))" }.joined(separator: " ") + "\"/>\n"
            for p in pts { s += "<circle cx=\"\(px(p.lr))\" cy=\"\(py(p.finalLoss))\" r=\"4\" fill=\"\(c)\"/>\n" }
            let ly = top + 20 + Double(i) * 20
            s += "<line x1=\"\(w - right + 15)\" y1=\"\(ly)\" x2=\"\(w - right + 40)\" y2=\"\(ly)\" stroke=\"\(c)\" stroke-width=\"2\"/>\n"
            s += "<text x=\"\(w - right + 46)\" y=\"\(ly + 4)\">\(m.rawValue)</text>\n"
        }
        return s + "</svg>\n"
    }
}
