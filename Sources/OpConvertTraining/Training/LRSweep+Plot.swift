import Foundation

/// What a sweep's plot says about its runs (the title line).
public struct SweepContext: Sendable {
    public var data: String
    public var rank: Int
    public var epochs: Int
    public var seed: UInt64

    public init(data: String, rank: Int, epochs: Int, seed: UInt64) {
        self.data = data; self.rank = rank; self.epochs = epochs; self.seed = seed
    }

    var title: String {
        "\((data as NSString).lastPathComponent), rank \(rank), \(epochs) epoch\(epochs == 1 ? "" : "s"), seed \(seed)"
    }
}

/// The sweep's SVG (the paper's Figure 2a): final training loss against learning rate on a
/// log axis, one line per method, the best rate of each ringed, diverged runs as crosses on
/// the top edge labelled "diverged", and a final-accuracy panel below.
package enum SweepPlot {
    static let width = 680.0
    static let left = 78.0, right = 150.0
    static let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    /// One number format for every label: %g with three significant digits, exponents
    /// without padding ("1e-05" -> "1e-5").
    package static func number(_ v: Double) -> String {
        if v == 0 { return "0" }
        var s = String(format: "%.3g", v)
        s = s.replacingOccurrences(of: "e-0", with: "e-").replacingOccurrences(of: "e+0", with: "e").replacingOccurrences(of: "e+", with: "e")
        return s
    }

    /// Round ticks covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `count` of them.
    package static func linearTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        let span = max(hi - lo, 1e-12)
        let raw = span / Double(count)
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? 10 * power
        let first = floor(lo / step + 1e-9), last = ceil(hi / step - 1e-9)
        return stride(from: first, through: last, by: 1).map { ($0 * step * 1e12).rounded() / 1e12 }
    }

    /// Log-axis ticks in [lo, hi] (values, not logs): the decades, or 1-2-5 within them when
    /// fewer than two decades fall inside.
    package static func logTicks(_ lo: Double, _ hi: Double) -> [Double] {
        let a = Int(floor(log10(lo))), b = Int(ceil(log10(hi)))
        func inside(_ v: Double) -> Bool { v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9) }
        let decades = (a...b).map { pow(10, Double($0)) }.filter(inside)
        if decades.count >= 2 { return decades }
        return (a...b).flatMap { e in [1.0, 2, 5].map { $0 * pow(10, Double(e)) } }.filter(inside)
    }

    package static func escaped(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    package static func render(points: [SweepResult.Point], methods: [AdapterMethod], lrs: [Double], context: SweepContext?) -> String {
        let lossPanel = (top: 64.0, height: 250.0)
        let accuracyPanel = (top: lossPanel.top + lossPanel.height + 60, height: 140.0)
        let showAccuracy = points.contains { $0.finalLoss.isFinite }
        let height = (showAccuracy ? accuracyPanel.top + accuracyPanel.height : lossPanel.top + lossPanel.height) + 50
        let plotRight = width - right

        // x: log10 of the rate, padded so the end points are not on the frame.
        let logs = lrs.map(log10)
        let xMin = (logs.min() ?? -3) - 0.25, xMax = (logs.max() ?? -3) + 0.25
        func px(_ lr: Double) -> Double { left + (log10(lr) - xMin) / max(xMax - xMin, 1e-12) * (plotRight - left) }

        // y: round ticks over the finite losses; a huge (but finite) loss would flatten the
        // rest, so the axis stops at 3x the median and such runs are marked "off scale".
        let finite = points.map(\.finalLoss).filter(\.isFinite).sorted()
        let median = finite.isEmpty ? 1 : finite[finite.count / 2]
        let cap = 3 * max(median, 1e-12)
        let shown = finite.filter { $0 <= cap }
        let yTicks = linearTicks(min(0, shown.first ?? 0), max(shown.last ?? 1, 1e-12))
        let yMin = yTicks.first ?? 0, yMax = yTicks.last ?? 1
        func py(_ y: Double) -> Double {
            lossPanel.top + (1 - (y - yMin) / max(yMax - yMin, 1e-12)) * lossPanel.height
        }

        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(width / 2)\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">Final train loss against learning rate</text>\n"
        if let context {
            s += "<text x=\"\(width / 2)\" y=\"42\" text-anchor=\"middle\" fill=\"#444\">\(escaped(context.title))</text>\n"
        }
        func frame(top: Double, height: Double, yLabel: String, ticks: [Double], y: (Double) -> Double) {
            for t in ticks {
                s += "<line x1=\"\(left)\" y1=\"\(y(t))\" x2=\"\(plotRight)\" y2=\"\(y(t))\" stroke=\"#e0e0e0\"/>\n"
                s += "<text x=\"\(left - 8)\" y=\"\(y(t) + 4)\" text-anchor=\"end\">\(number(t))</text>\n"
            }
            for t in logTicks(pow(10, xMin), pow(10, xMax)) {
                s += "<line x1=\"\(px(t))\" y1=\"\(top + height)\" x2=\"\(px(t))\" y2=\"\(top + height + 5)\" stroke=\"black\"/>\n"
                s += "<text x=\"\(px(t))\" y=\"\(top + height + 19)\" text-anchor=\"middle\">\(number(t))</text>\n"
            }
            s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotRight - left)\" height=\"\(height)\" fill=\"none\" stroke=\"black\"/>\n"
            let mid = top + height / 2
            s += "<text x=\"18\" y=\"\(mid)\" transform=\"rotate(-90 18 \(mid))\" text-anchor=\"middle\">\(yLabel)</text>\n"
            s += "<text x=\"\((left + plotRight) / 2)\" y=\"\(top + height + 38)\" text-anchor=\"middle\">learning rate (log scale)</text>\n"
        }
        frame(top: lossPanel.top, height: lossPanel.height, yLabel: "final train loss", ticks: yTicks, y: py)

        for (i, m) in methods.enumerated() {
            let c = colors[i % colors.count]
            let mine = points.filter { $0.method == m }.sorted { $0.lr < $1.lr }
            let onScale = mine.filter { $0.finalLoss.isFinite && $0.finalLoss <= cap }
            if onScale.count > 1 {
                s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"" + onScale.map { "\(px($0.lr)),\(py($0.finalLoss))" }.joined(separator: " ") + "\"/>\n"
            }
            for p in onScale { s += "<circle cx=\"\(px(p.lr))\" cy=\"\(py(p.finalLoss))\" r=\"4\" fill=\"\(c)\"/>\n" }
            // Runs that did not finish (diverged) or ended above the axis: on the top edge,
            // inside the frame, labelled, never drawn as an ordinary point.
            for p in mine where !(p.finalLoss.isFinite && p.finalLoss <= cap) {
                let x = px(p.lr), y = lossPanel.top + 8
                s += "<path d=\"M\(x - 5),\(y - 5) L\(x + 5),\(y + 5) M\(x - 5),\(y + 5) L\(x + 5),\(y - 5)\" stroke=\"\(c)\" stroke-width=\"2.5\"/>\n"
                let what = p.finalLoss.isFinite ? "off scale (\(number(p.finalLoss)))" : "diverged"
                s += "<text x=\"\(x)\" y=\"\(y + 20 + Double(i) * 13)\" text-anchor=\"middle\" font-size=\"10\" fill=\"\(c)\">\(what)</text>\n"
            }
            if let best = onScale.min(by: { $0.finalLoss < $1.finalLoss }) {
                s += "<circle cx=\"\(px(best.lr))\" cy=\"\(py(best.finalLoss))\" r=\"8\" fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\"/>\n"
            }
            let ly = lossPanel.top + 14 + Double(i) * 34
            s += "<line x1=\"\(plotRight + 14)\" y1=\"\(ly)\" x2=\"\(plotRight + 38)\" y2=\"\(ly)\" stroke=\"\(c)\" stroke-width=\"2\"/>\n"
            s += "<text x=\"\(plotRight + 44)\" y=\"\(ly + 4)\">\(escaped(m.rawValue))</text>\n"
            let bestText = onScale.min(by: { $0.finalLoss < $1.finalLoss }).map { "best lr \(number($0.lr)): \(number($0.finalLoss))" } ?? "no finished run"
            s += "<text x=\"\(plotRight + 44)\" y=\"\(ly + 18)\" font-size=\"10\" fill=\"#444\">\(bestText)</text>\n"
        }

        if showAccuracy {
            let top = accuracyPanel.top, h = accuracyPanel.height
            func pa(_ a: Double) -> Double { top + (1 - a) * h }
            frame(top: top, height: h, yLabel: "final accuracy", ticks: linearTicks(0, 1, count: 4), y: pa)
            for (i, m) in methods.enumerated() {
                let c = colors[i % colors.count]
                let done = points.filter { $0.method == m && $0.finalLoss.isFinite }.sorted { $0.lr < $1.lr }
                if done.count > 1 {
                    s += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"" + done.map { "\(px($0.lr)),\(pa($0.finalAccuracy))" }.joined(separator: " ") + "\"/>\n"
                }
                for p in done { s += "<circle cx=\"\(px(p.lr))\" cy=\"\(pa(p.finalAccuracy))\" r=\"3.5\" fill=\"\(c)\"/>\n" }
            }
        }
        return s + "</svg>\n"
    }
}
