import Foundation
import XCTest
import OpConvertKit

/// `opconvert merge / inspect` with kohya LoRA/LoCon files and Stable Diffusion bases
/// (fixtures/sd): a diffusers pipeline directory and a single LDM checkpoint, as scripts see them.
final class KohyaCLITests: XCTestCase {
    let pipeline = "fixtures/sd/base/sd15"
    let single = "fixtures/sd/base/sd15.safetensors"
    let lora = "fixtures/sd/adapters/kohya_lora_sd15.safetensors"
    let locon = "fixtures/sd/adapters/kohya_locon_sd15.safetensors"

    private func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    private func contents(_ relative: String) -> Data {
        FileManager.default.contents(atPath: CLITests.repoRoot + "/" + relative) ?? Data()
    }

    private func files(under path: String) throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: path.hasPrefix("/") ? path : CLITests.repoRoot + "/" + path).sorted()
    }

    /// A kohya file: the fixture's tensors plus `extra` (f32), written at `path`.
    private func kohyaFile(_ path: String, extra: [(String, [Int], [Float])]) throws {
        let store = try TensorStore.open(CLITests.repoRoot + "/" + lora)
        var header: [String] = [], data: [UInt8] = []
        for e in store.entries {
            let start = data.count
            data += [UInt8](store.data(e))
            header.append("\"\(e.info.name)\":{\"dtype\":\"\(e.info.dtype.rawValue)\",\"shape\":\(e.info.shape),\"data_offsets\":[\(start),\(data.count)]}")
        }
        for (name, shape, values) in extra {
            let start = data.count
            data += values.withUnsafeBytes { [UInt8]($0) }
            header.append("\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(start),\(data.count)]}")
        }
        var json = Array(("{" + header.joined(separator: ",") + "}").utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes += $0 }
        FileManager.default.createFile(atPath: path, contents: Data(bytes + json + data))
    }

    func testMergeIntoPipelineDirectoryKeepsItsLayout() throws {
        let out = cliScratch() + "/merged"
        let before = (contents(lora), contents(pipeline + "/unet/diffusion_pytorch_model.safetensors"))
        let r = try runOpconvert(["merge", pipeline, lora, "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let summary = try json(r.stdout)
        let adapter = try XCTUnwrap((summary["adapters"] as? [[String: Any]])?.first)
        XCTAssertEqual(adapter["kind"] as? String, "kohya-lora")
        XCTAssertGreaterThan(adapter["modules"] as? Int ?? 0, 10)
        // Absolute paths (the JSON contract), under the output.
        XCTAssertEqual((summary["files"] as? [String])?.map { $0.replacingOccurrences(of: out + "/", with: "") }.sorted(), ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"])
        XCTAssertEqual(try files(under: out), try files(under: pipeline))
        for f in ["model_index.json", "vae/diffusion_pytorch_model.safetensors", "vae/config.json", "unet/config.json", "text_encoder/config.json"] {
            XCTAssertEqual(FileManager.default.contents(atPath: out + "/" + f), contents(pipeline + "/" + f), f)
        }
        XCTAssertNotEqual(FileManager.default.contents(atPath: out + "/unet/diffusion_pytorch_model.safetensors"), before.1)
        XCTAssertEqual(contents(lora), before.0, "adapter unmodified")
        XCTAssertEqual(contents(pipeline + "/unet/diffusion_pytorch_model.safetensors"), before.1, "base unmodified")
        // The merged pipeline reads back as one.
        let i = try runOpconvert(["inspect", out, "--json"])
        XCTAssertEqual(i.status, 0, i.stderr)
        let report = try json(i.stdout)
        XCTAssertEqual(report["kind"] as? String, "pipeline")
        XCTAssertEqual((report["files"] as? [[String: Any]])?.compactMap { $0["name"] as? String }.sorted(),
                       ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"])
    }

    func testMergeLoConIntoSingleFileCheckpoint() throws {
        let out = cliScratch() + "/merged.safetensors"
        let r = try runOpconvert(["merge", single, locon, "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual((try json(r.stdout)["adapters"] as? [[String: Any]])?.first?["kind"] as? String, "kohya-locon")
        let merged = try TensorStore.open(out), base = try TensorStore.open(CLITests.repoRoot + "/" + single)
        XCTAssertEqual(merged.entries.map(\.info.name), base.entries.map(\.info.name))
    }

    func testInspectShowsTheKohyaAdapter() throws {
        let r = try runOpconvert(["inspect", locon, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let report = try json(r.stdout)
        XCTAssertEqual(report["kind"] as? String, "kohya-adapter")
        // Typed values (the JSON contract): numbers are numbers.
        let details = try XCTUnwrap(report["details"] as? [String: Any])
        // The fixture manifest's key and module counts.
        let manifest = try json(String(decoding: contents("fixtures/sd/cases.json"), as: UTF8.self))
        let entry = try XCTUnwrap((manifest["cases"] as? [[String: Any]])?.first { $0["name"] as? String == "kohya_locon_sd15" })
        XCTAssertEqual(details["keys"] as? Int, try XCTUnwrap(entry["adapter_keys"] as? Int))
        XCTAssertEqual((report["modules"] as? [[String: Any]])?.count, (entry["modules"] as? [String: Any])?.count)
        XCTAssertEqual(details["adapter_kind"] as? String, "kohya-locon")
        XCTAssertNotNil(details["rank"])
        XCTAssertNotNil(details["alphas"])
        XCTAssertNotNil(details["conv_modules"])
        let text = try runOpconvert(["inspect", lora])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("kohya"), text.stdout)
    }

    func testBadKohyaFilesGetOneLineErrorsWithExitCodes() throws {
        let dir = cliScratch()
        // A key no module type uses: 65, naming it; nothing written.
        try kohyaFile(dir + "/stray.safetensors", extra: [("lora_unet_conv_in.lora_up.weight", [16, 1], [Float](repeating: 0, count: 16))])
        var r = try runOpconvert(["merge", pipeline, dir + "/stray.safetensors", "-o", dir + "/out"])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("lora_unet_conv_in"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
        // A module type known but not read (GLoRA): 69.
        try kohyaFile(dir + "/glora.safetensors", extra: [("lora_unet_conv_in.a1.weight", [1, 4], [1, 2, 3, 4])])
        r = try runOpconvert(["merge", pipeline, dir + "/glora.safetensors", "-o", dir + "/out"])
        XCTAssertEqual(r.status, 69, r.stderr)
        XCTAssertTrue(r.stderr.contains("GLoRA") && r.stderr.contains("lora_unet_conv_in.a1.weight"), r.stderr)
        // A module the base does not have: 65, naming it.
        try kohyaFile(dir + "/unmatched.safetensors", extra: [("lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight", [1, 4], [1, 2, 3, 4]),
                                                             ("lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight", [4, 1], [1, 2, 3, 4])])
        r = try runOpconvert(["merge", single, dir + "/unmatched.safetensors", "-o", dir + "/out.safetensors"])
        XCTAssertEqual(r.status, 65, r.stderr)
        XCTAssertTrue(r.stderr.contains("lora_unet_down_blocks_7_resnets_0_conv1"), r.stderr)
        // A pipeline base is written as a directory.
        r = try runOpconvert(["merge", pipeline, lora, "-o", dir + "/out.safetensors"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }
}
