import Foundation
import XCTest
@testable import OpConvertKit

/// Other tools' ways of saying the same thing: negative --weight values, llama.cpp's
/// ADAPTER:WEIGHT, kohya's --ratios, Hugging Face hub ids from the local cache, and BASE
/// taken from the adapter's base_model_name_or_path.
final class PeerConventionsCLITests: XCTestCase {
    let model = "fixtures/peft/models/llama_f32"
    let lora = "fixtures/peft/adapters/llama_lora"
    let dora = "fixtures/peft/adapters/llama_dora"

    /// opconvert with extra environment variables (the hub cache's).
    func run(_ args: [String], environment: [String: String] = [:]) throws -> CLIRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: CLITests.repoRoot)
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self), killedBySignal: false)
    }

    func weights(_ dir: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors")) }

    func merged(_ args: [String], environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> (Data, [String: Any]) {
        let out = cliScratch() + "/out"
        let r = try run(["merge"] + args + ["-o", out, "--json"], environment: environment)
        XCTAssertEqual(r.status, 0, "\(args): \(r.stderr)", file: file, line: line)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
        return (try weights(out), json)
    }

    func testNegativeWeightsInBothForms() throws {
        let (spaced, j) = try merged([model, lora, "--weight", "-1"])
        let (attached, _) = try merged([model, lora, "--weight=-1"])
        let (positive, _) = try merged([model, lora, "--weight", "1"])
        XCTAssertEqual(spaced, attached)
        XCTAssertNotEqual(spaced, positive)
        XCTAssertEqual((j["adapters"] as? [[String: Any]])?.first?["weight"] as? Double, -1)
    }

    func testAdapterColonWeightIsTheWeight() throws {
        let (suffixed, j) = try merged([model, lora + ":0.5", dora + ":-0.25"])
        let (flags, _) = try merged([model, lora, dora, "--weight", "0.5", "--weight", "-0.25"])
        XCTAssertEqual(suffixed, flags)
        let adapters = j["adapters"] as? [[String: Any]] ?? []
        XCTAssertEqual(adapters.map { $0["weight"] as? Double }, [0.5, -0.25])
        XCTAssertTrue((adapters.first?["path"] as? String ?? "").hasSuffix("/" + lora), "\(adapters)")

        let both = try run(["merge", model, lora + ":0.5", "--weight", "1", "-o", cliScratch() + "/x"])
        XCTAssertEqual(both.status, 64, both.stderr)
        XCTAssertTrue(both.stderr.contains("ADAPTER:WEIGHT"), both.stderr)
    }

    func testARealPathWithAColonWins() throws {
        let dir = cliScratch()
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + lora, toPath: dir + "/a")
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + lora, toPath: dir + "/a:2")
        let (data, j) = try merged([model, dir + "/a:2"])
        let adapter = (j["adapters"] as? [[String: Any]])?.first
        XCTAssertEqual(adapter?["path"] as? String, dir + "/a:2", "the existing path, not a with weight 2")
        XCTAssertEqual(adapter?["weight"] as? Double, 1)
        XCTAssertEqual(data, try merged([model, dir + "/a"]).0)
        // A suffix that is not a number is part of the (missing) path.
        let r = try run(["merge", model, dir + "/a:two", "-o", dir + "/x"])
        XCTAssertEqual(r.status, 66, r.stderr)
        XCTAssertTrue(r.stderr.contains(dir + "/a:two"), r.stderr)
    }

    func testRatiosIsKohyasNameForWeights() throws {
        let (ratios, _) = try merged([model, lora, dora, "--ratios", "0.5,0.7"])
        let (repeated, _) = try merged([model, lora, dora, "--ratios", "0.5", "--ratios", "0.7"])
        let (weights, _) = try merged([model, lora, dora, "--weight", "0.5", "--weight", "0.7"])
        XCTAssertEqual(ratios, weights)
        XCTAssertEqual(repeated, weights)
        let both = try run(["merge", model, lora, "--ratios", "1", "--weight", "1", "-o", cliScratch() + "/x"])
        XCTAssertEqual(both.status, 64, both.stderr)
        let count = try run(["merge", model, lora, "--ratios", "1,2", "-o", cliScratch() + "/x"])
        XCTAssertEqual(count.status, 64, count.stderr)
        let text = try run(["merge", model, lora, "--ratios", "half", "-o", cliScratch() + "/x"])
        XCTAssertEqual(text.status, 64, text.stderr)
        XCTAssertTrue(text.stderr.contains("half"), text.stderr)
    }

    /// A hub cache holding `org/tiny` at two revisions, refs/main naming `main`.
    func hubCache(refsMain: Bool) throws -> (cache: String, main: String, other: String) {
        let cache = cliScratch() + "/hub"
        let repo = cache + "/models--org--tiny"
        let main = repo + "/snapshots/1111aaaa", other = repo + "/snapshots/2222bbbb"
        try FileManager.default.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: repo + "/snapshots", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + model, toPath: main)
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + model, toPath: other)
        // `other` is the newer one: refs/main must win over modification time.
        // (copyItem keeps the source's times: both are set.)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: main)
        try FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: other)
        if refsMain { try Data("1111aaaa".utf8).write(to: URL(fileURLWithPath: repo + "/refs/main")) }
        return (cache, main, other)
    }

    func testHubIDsResolveInTheLocalCache() throws {
        let hub = try hubCache(refsMain: true)
        let (data, j) = try merged(["org/tiny", lora], environment: ["HF_HUB_CACHE": hub.cache])
        XCTAssertEqual(j["base"] as? String, hub.main, "refs/main's snapshot")
        XCTAssertEqual(data, try merged([model, lora]).0)

        let noRef = try hubCache(refsMain: false)
        let (_, newest) = try merged(["org/tiny", lora], environment: ["HF_HUB_CACHE": noRef.cache])
        XCTAssertEqual(newest["base"] as? String, noRef.other, "without refs/main: the newest snapshot")

        // HF_HOME/hub is the next place looked.
        let home = cliScratch()
        try FileManager.default.moveItem(atPath: hub.cache, toPath: home + "/hub")
        let (_, viaHome) = try merged(["org/tiny", lora], environment: ["HF_HUB_CACHE": "", "HF_HOME": home])
        XCTAssertEqual(viaHome["base"] as? String, home + "/hub/models--org--tiny/snapshots/1111aaaa")

        let missing = try run(["merge", "org/absent", lora, "-o", cliScratch() + "/x"], environment: ["HF_HUB_CACHE": noRef.cache, "HF_HOME": home])
        XCTAssertEqual(missing.status, 66, missing.stderr)
        XCTAssertTrue(missing.stderr.contains(noRef.cache + "/models--org--absent"), missing.stderr)
        XCTAssertTrue(missing.stderr.contains(home + "/hub/models--org--absent"), missing.stderr)
        XCTAssertEqual(missing.stderr.split(separator: "\n").count, 1)
    }

    /// A copy of `adapter` whose config names `base` (nested under peft_config for OP checkpoints).
    func adapter(_ adapter: String, namingBase base: String, config: String = "adapter_config.json") throws -> String {
        let copy = cliScratch() + "/adapter"
        try FileManager.default.copyItem(atPath: CLITests.repoRoot + "/" + adapter, toPath: copy)
        let path = copy + "/" + config
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        if config == "op_config.json" {
            var peft = json["peft_config"] as? [String: Any] ?? [:]
            peft["base_model_name_or_path"] = base
            json["peft_config"] = peft
        } else {
            json["base_model_name_or_path"] = base
        }
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        return copy
    }

    func testOmittedBaseComesFromTheAdapter() throws {
        let named = try adapter(lora, namingBase: CLITests.repoRoot + "/" + model)
        let (data, j) = try merged([named])
        XCTAssertEqual(j["base"] as? String, CLITests.repoRoot + "/" + model)
        XCTAssertEqual(data, try merged([model, lora]).0)
        let (scaled, _) = try merged([named + ":0.5"])
        XCTAssertEqual(scaled, try merged([model, lora, "--weight", "0.5"]).0)

        let hub = try hubCache(refsMain: true)
        let viaHub = try adapter(lora, namingBase: "org/tiny")
        let (_, h) = try merged([viaHub], environment: ["HF_HUB_CACHE": hub.cache])
        XCTAssertEqual(h["base"] as? String, hub.main)

        let nowhere = try adapter(lora, namingBase: "models/not-here")
        let r = try run(["merge", nowhere, "-o", cliScratch() + "/x", "--json"], environment: ["HF_HUB_CACHE": hub.cache])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("base_model_name_or_path \"models/not-here\""), r.stderr)
        XCTAssertTrue(r.stderr.contains(CLITests.repoRoot + "/models/not-here"), "says where it looked: \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("\"category\":\"usage\""), r.stdout)
    }

    func testMaterializeTakesTheCheckpointsBase() throws {
        let ckpt = "fixtures/op/checkpoints/op_lora_f32"
        let withBase = cliScratch() + "/explicit"
        XCTAssertEqual(try run(["materialize", ckpt, "--base", model, "-o", withBase]).status, 0)
        let named = try adapter(ckpt, namingBase: CLITests.repoRoot + "/" + model, config: "op_config.json")
        let out = cliScratch() + "/inferred"
        let r = try run(["materialize", named, "-o", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/adapter_model.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: withBase + "/adapter_model.safetensors")))
        // A hub id for --base.
        let hub = try hubCache(refsMain: true)
        let viaHub = cliScratch() + "/hub-out"
        XCTAssertEqual(try run(["materialize", ckpt, "--base", "org/tiny", "-o", viaHub], environment: ["HF_HUB_CACHE": hub.cache]).status, 0)
    }
}
