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
        if let dup = duplicateRate(lrs) {
            throw TrainError.invalidOption("--lr-sweep: the rate \(dup) is given twice")
        }
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
        for (name, text) in zip(files, [csv, md, svg(points: points, methods: methods, lrs: lrs,
                                                          context: SweepContext(data: base.data, rank: base.rank, epochs: base.epochs, seed: base.seed))]) {
            let f = try OutputFile(path: dir.path(name))
            try f.write(Array(text.utf8))
            try f.commit(sync: true)
        }
        try dir.commit()
        return SweepResult(points: points, files: files.map { FileSystem.join(outputDirectory, $0) }, device: device?.label ?? "")
    }

    /// The plot (LRSweep+Plot.swift), with the run's data, rank, epochs and seed in its title.
    static func svg(points: [SweepResult.Point], methods: [AdapterMethod], lrs: [Double], context: SweepContext? = nil) -> String {
        SweepPlot.render(points: points, methods: methods, lrs: lrs, context: context)
    }

    /// The first rate given twice (1e-3 and 0.001 are the same rate), or nil.
    public static func duplicateRate(_ lrs: [Double]) -> Double? {
        var seen = Set<Double>()
        for lr in lrs where !seen.insert(lr).inserted { return lr }
        return nil
    }
}
