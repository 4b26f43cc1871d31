import Foundation
import XCTest

/// `merge --tie-mode` as scripts see it: exit codes, JSON fields, warnings on stderr.
final class TiedEmbeddingsCLITests: XCTestCase {
    let base = "fixtures/tied/models/llama_tied"

    private func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func testDefaultUntiesAndSaysSo() throws {
        let out = cliScratch() + "/m"
        let r = try runOpconvert(["merge", base, "fixtures/tied/adapters/embed_lora", "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r.stdout)
        XCTAssertEqual(j["tied_embeddings"] as? String, "untied")
        XCTAssertTrue((j["warnings"] as? [String] ?? []).contains { $0.contains("tie_word_embeddings: false") }, r.stdout)
        XCTAssertTrue(r.stderr.contains("warning:") && r.stderr.contains("tie_word_embeddings: false"), r.stderr)
        let config = String(decoding: FileManager.default.contents(atPath: out + "/config.json") ?? Data(), as: UTF8.self)
        XCTAssertTrue(config.contains("\"tie_word_embeddings\": false"), config)
    }

    func testKeepAndRefuse() throws {
        let dir = cliScratch()
        let keep = try runOpconvert(["merge", base, "fixtures/tied/adapters/head_lora", "-o", dir + "/keep", "--tie-mode", "keep", "--json"])
        XCTAssertEqual(keep.status, 0, keep.stderr)
        XCTAssertEqual(try json(keep.stdout)["tied_embeddings"] as? String, "kept")
        XCTAssertTrue(keep.stderr.contains("differs from the adapted model"), keep.stderr)

        let refuse = try runOpconvert(["merge", base, "fixtures/tied/adapters/head_lora", "-o", dir + "/refuse", "--tie-mode", "refuse"])
        XCTAssertEqual(refuse.status, 69, refuse.stderr)
        XCTAssertTrue(refuse.stderr.hasPrefix("opconvert: error: lm_head:"), refuse.stderr)
        XCTAssertEqual(refuse.stderr.split(separator: "\n").count, 1, refuse.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/refuse"))

        let bad = try runOpconvert(["merge", base, "fixtures/tied/adapters/head_lora", "-o", dir + "/bad", "--tie-mode", "split"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
    }

    func testResizedVocabulary() throws {
        let out = cliScratch() + "/m"
        let r = try runOpconvert(["merge", base, "fixtures/tied/adapters/resized_vocab", "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try json(r.stdout)["vocab_size"] as? Int, 104)
        let config = String(decoding: FileManager.default.contents(atPath: out + "/config.json") ?? Data(), as: UTF8.self)
        XCTAssertTrue(config.contains("\"vocab_size\": 104"), config)

        let bad = try runOpconvert(["merge", base, "fixtures/tied/bad/resized_embed_lora", "-o", out + "2"])
        XCTAssertEqual(bad.status, 65, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("resized vocabulary"), bad.stderr)
    }
}
