import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
@testable import OpConvertKit

/// `train --lr-sweep`'s SVG: well-formed XML with the run's context in the title, round
/// ticks, the best rate marked, diverged runs labelled on the top edge, an accuracy panel,
/// and a picture rsvg-convert renders; reruns need --overwrite; duplicate rates are refused.
final class SweepPlotCLITests: XCTestCase {
    /// Collects every <text> element's content.
    final class TextCollector: NSObject, XMLParserDelegate {
        var texts: [String] = []
        var elements: [String: Int] = [:]
        private var current: String?
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            elements[name, default: 0] += 1
            if name == "text" { current = "" }
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { current? += string }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "text", let c = current { texts.append(c); current = nil }
        }
    }

    func sweep(_ dir: String, _ extra: [String] = []) throws -> CLIRun {
        try runOpconvert(["train", "--demo", "--epochs", "2", "--methods", "lora,op-lora", "--lr-sweep", "1e-3,1e-2,10",
                          "--sweep-dir", dir, "--no-progress", "--device", "cpu"] + extra)
    }

    func testSweepPlotIsWellFormedAndSaysWhatHappened() throws {
        let dir = cliScratch() + "/sweep"
        let r = try sweep(dir)
        XCTAssertEqual(r.status, 0, r.stderr)
        let svg = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/sweep.svg"))
        let parser = XMLParser(data: svg)
        let collector = TextCollector()
        parser.delegate = collector
        XCTAssertTrue(parser.parse(), "sweep.svg is not well-formed XML: \(String(describing: parser.parserError))")
        let texts = collector.texts
        XCTAssertTrue(texts.contains("data.safetensors, rank 4, 2 epochs, seed 0"), "title context: \(texts)")
        // lr 10 diverges for both methods: labelled, once per method.
        XCTAssertEqual(texts.filter { $0 == "diverged" }.count, 2, "\(texts)")
        XCTAssertEqual(texts.filter { $0.hasPrefix("best lr ") }.count, 2, "\(texts)")
        XCTAssertTrue(texts.contains("final accuracy"), "accuracy panel: \(texts)")
        // Tick labels: one number format, values on the 1-2-5 sequence.
        let numbers = texts.compactMap(Double.init)
        XCTAssertFalse(numbers.isEmpty)
        for v in numbers where v != 0 {
            let mantissa = v / pow(10, floor(log10(abs(v))))
            XCTAssertTrue([1, 2, 5].contains { abs(mantissa - $0) < 1e-9 } || [1.5, 2.5, 7.5].contains { abs(mantissa - $0) < 1e-9 } || abs(mantissa * 2 - (mantissa * 2).rounded()) < 1e-9,
                          "tick \(v) is not a round number")
        }
        XCTAssertTrue(texts.contains("0.001") && texts.contains("0.01") && texts.contains("10"), "decade ticks: \(texts)")
        XCTAssertFalse(texts.contains { $0.contains("1e-03") || $0.contains("0.0010") }, "one number format: \(texts)")

        try renderCheck(svg: dir + "/sweep.svg")
    }

    func testTickHelpers() {
        XCTAssertEqual(SweepPlot.linearTicks(0, 1.37), [0, 0.5, 1, 1.5])
        XCTAssertEqual(SweepPlot.linearTicks(0, 7.2), [0, 2, 4, 6, 8])
        XCTAssertEqual(SweepPlot.logTicks(1e-5 * 0.6, 1e-2 * 1.7), [1e-5, 1e-4, 1e-3, 1e-2])
        XCTAssertEqual(SweepPlot.logTicks(1.1e-3, 9e-3), [2e-3, 5e-3])
        XCTAssertEqual(SweepPlot.number(1e-5), "1e-5")
        XCTAssertEqual(SweepPlot.number(0.0001), "0.0001")
        XCTAssertEqual(SweepPlot.number(1.5), "1.5")
        XCTAssertEqual(SweepPlot.escaped("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;")
    }

    /// rsvg-convert (librsvg2-bin, scripts/setup.sh) renders the plot: a PNG of the SVG's size
    /// with far more detail than a blank picture of that size.
    func renderCheck(svg: String) throws {
        guard let rsvg = ["/usr/bin/rsvg-convert", "/usr/local/bin/rsvg-convert"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            print("SweepPlotCLITests: rsvg-convert is not installed (apt-get install librsvg2-bin): PNG render check skipped")
            return
        }
        let dir = (svg as NSString).deletingLastPathComponent
        let blank = dir + "/blank.svg"
        try "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"680\" height=\"574\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/></svg>\n"
            .write(toFile: blank, atomically: true, encoding: .utf8)
        func render(_ input: String) throws -> [UInt8] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: rsvg)
            p.arguments = [input, "-o", input + ".png"]
            let err = Pipe()
            p.standardError = err
            try p.run()
            let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "rsvg-convert \(input): \(e)")
            return [UInt8](FileManager.default.contents(atPath: input + ".png") ?? Data())
        }
        let png = try render(svg), empty = try render(blank)
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], "not a PNG")
        guard png.count > 24 else { return XCTFail("PNG too short") }
        let width = png[16..<20].reduce(0) { $0 << 8 | Int($1) }, height = png[20..<24].reduce(0) { $0 << 8 | Int($1) }
        XCTAssertEqual(width, 680)
        XCTAssertGreaterThan(height, 400)
        XCTAssertGreaterThan(png.count, 5 * empty.count, "the rendered plot (\(png.count) bytes) is hardly more than a blank picture (\(empty.count))")
    }

    func testRerunNeedsOverwriteAndDuplicateRatesAreRefused() throws {
        let dir = cliScratch() + "/sweep"
        XCTAssertEqual(try sweep(dir).status, 0)
        let again = try sweep(dir)
        XCTAssertEqual(again.status, 73, again.stderr)
        XCTAssertTrue(again.stderr.contains("--overwrite"), again.stderr)
        let replaced = try sweep(dir, ["--overwrite"])
        XCTAssertEqual(replaced.status, 0, replaced.stderr)
        let dup = try runOpconvert(["train", "--demo", "--lr-sweep", "1e-3,0.01,0.001", "--sweep-dir", cliScratch() + "/s"])
        XCTAssertEqual(dup.status, 64, dup.stderr)
        XCTAssertTrue(dup.stderr.contains("0.001 is given twice"), dup.stderr)
    }
}
