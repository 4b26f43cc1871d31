import OpConvertCore
import OpConvertTensors

// inspect's human tables: columns aligned to their widest cell (names capped), numbers
// right-aligned, and sizes labelled as tensor data or whole files.
extension Inspector {
    /// Rows of cells as aligned lines: each column as wide as its widest cell (at most
    /// `maxWidth`), the columns in `rightAligned` padded on the left.
    static func table(_ rows: [[String]], rightAligned: Set<Int>, maxWidth: Int = 72, indent: String = "  ") -> String {
        guard let columns = rows.map(\.count).max() else { return "" }
        let widths = (0..<columns).map { c in min(maxWidth, rows.map { c < $0.count ? $0[c].count : 0 }.max() ?? 0) }
        var out = ""
        for row in rows {
            var cells: [String] = []
            for (c, cell) in row.enumerated() {
                let pad = String(repeating: " ", count: max(0, widths[c] - cell.count))
                // The last cell is not padded on the right: no trailing blanks.
                cells.append(rightAligned.contains(c) ? pad + cell : (c == row.count - 1 ? cell : cell + pad))
            }
            out += indent + cells.joined(separator: "  ") + "\n"
        }
        return out
    }

    /// A dataset (training inputs and labels, or token rows) holds elements, not parameters.
    static func countNoun(_ r: InspectReport) -> String {
        let datasetNames: Set<String> = ["inputs", "labels", "input_ids"]
        let isDataset = ["safetensors", "sharded"].contains(r.kind) && r.tensors.contains { datasetNames.contains($0.name) }
        return isDataset ? "elements" : "parameters"
    }

    /// The files by name, with tensors, tensor data and file sizes (shown for more than one file).
    static func renderFiles(_ r: InspectReport) -> String {
        guard r.files.count > 1 else { return "" }
        var rows = [["file", "tensors", "tensor data", "file size"]]
        for f in r.files {
            let data = r.tensors.filter { $0.file == f.name }.reduce(0) { $0 + $1.bytes }
            rows.append([f.name.displayEscaped, "\(f.tensors)", formatBytes(data), formatBytes(f.bytes)])
        }
        return "files:\n" + table(rows, rightAligned: [1, 2, 3])
    }

    static func renderTensors(_ r: InspectReport, shown: ArraySlice<InspectReport.Tensor>) -> String {
        var rows = [["name", "dtype", "shape", "bytes"] + (r.files.count > 1 ? ["file"] : [])]
        for t in shown {
            var row = [t.name.displayEscaped, t.dtype, shapeText(t.shape), formatBytes(t.bytes)]
            if r.files.count > 1 { row.append(t.file.displayEscaped) }
            if let bad = t.nonFinite, bad > 0 {
                if row.count == 4 { row.append("") }
                row.append("\(bad) NaN/Inf")
            }
            rows.append(row)
        }
        return "tensors:\n" + table(rows, rightAligned: [3])
    }

    static func renderTotals(_ r: InspectReport) -> String {
        let noun = countNoun(r)
        let fileBytes = r.files.reduce(0) { $0 + $1.bytes }
        var out = "totals: \(r.totals.tensors) tensors, \(r.totals.parameters) \(noun), \(formatBytes(r.totals.bytes)) of tensor data"
            + " (\(formatBytes(fileBytes)) in \(r.files.count) file\(r.files.count == 1 ? "" : "s"))\n"
        let rows = r.totals.byDtype.keys.sorted().map { k -> [String] in
            let d = r.totals.byDtype[k]!
            return [k + ":", "\(d.tensors) tensors", "\(d.parameters) \(noun)", formatBytes(d.bytes)]
        }
        out += table(rows, rightAligned: [1, 2, 3])
        return out
    }
}
