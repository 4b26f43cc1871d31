import Foundation
import XCTest
@testable import OpConvertKit

/// f32 safetensors from (name, shape, values), for adapters made in the test.
func writeF32Safetensors(_ path: String, _ tensors: [(String, [Int], [Float])]) {
    var header: [String] = []
    var data: [UInt8] = []
    for (name, shape, values) in tensors {
        let start = data.count
        data += values.bytes
        header.append("\"\(name)\":{\"dtype\":\"F32\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(start),\(data.count)]}")
    }
    writeFile(path, rawSafetensors(header: "{" + header.joined(separator: ",") + "}", data: data))
}

/// Deterministic small values (no RNG state shared between tests).
func sdTestValues(_ n: Int, seed: Int) -> [Float] {
    (0..<n).map { i in Float(((i * 7919 + seed * 104729) % 2001) - 1000) / 4000 }
}

final class SDBaseAndKohyaTests: XCTestCase {
    let sd15Dir = TestPaths.fixture("sd/base/sd15")
    let sd15File = TestPaths.fixture("sd/base/sd15.safetensors")
    let sdxlDir = TestPaths.fixture("sd/base/sdxl")
    let sdxlFile = TestPaths.fixture("sd/base/sdxl.safetensors")

    func floats(_ store: TensorStore, _ name: String) throws -> [Float] {
        let e = try XCTUnwrap(store.entry(named: name), "no tensor \(name) in \(store.path)")
        return try TensorData.stored(store, e).floats()
    }

    func bytes(_ store: TensorStore, _ name: String, rows: Range<Int>? = nil) throws -> [UInt8] {
        let e = try XCTUnwrap(store.entry(named: name), "no tensor \(name)")
        let all = [UInt8](store.data(e))
        guard let rows else { return all }
        let rowBytes = all.count / e.info.shape[0]
        return Array(all[rows.lowerBound * rowBytes ..< rows.upperBound * rowBytes])
    }

    // MARK: - Bases and names

    func testPipelineDirectoryOpensAsOneNamespaceOfComponents() throws {
        let store = try TensorStore.open(sd15Dir)
        XCTAssertEqual(store.layout, .components)
        XCTAssertEqual(store.components.map(\.name), ["text_encoder", "unet", "vae"])
        XCTAssertEqual(store.tensorCount, store.components.reduce(0) { $0 + $1.store.tensorCount })
        XCTAssertTrue(store.contains("unet/down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"))
        XCTAssertTrue(store.contains("text_encoder/text_model.encoder.layers.0.self_attn.q_proj.weight"))
        XCTAssertEqual(store.components.first { $0.name == "unet" }?.weightsStem, "diffusion_pytorch_model")
        XCTAssertEqual(store.components.first { $0.name == "text_encoder" }?.weightsStem, "model")
        XCTAssertEqual(store.auxiliaryFiles, ["model_index.json"])
        // The same bytes through the prefixed name as through the component.
        let unet = try TensorStore.open(sd15Dir + "/unet")
        XCTAssertEqual(try bytes(store, "unet/conv_in.weight"), try bytes(unet, "conv_in.weight"))
        XCTAssertTrue(store.inputPaths.contains(sd15Dir + "/unet/config.json"))
    }

    /// The single file is the pipeline's weights under LDM names: every module's kohya name
    /// must find the same bytes in both (this checks the LDM <-> diffusers block map).
    func checkSingleFileAgreesWithPipeline(file: String, dir: String) throws {
        let single = try TensorStore.open(file), pipeline = try TensorStore.open(dir)
        let a = SDModuleNames(baseNames: single.entries.map(\.info.name)).kohya
        let b = SDModuleNames(baseNames: pipeline.entries.map(\.info.name)).kohya
        var compared = 0, fused = 0
        for (name, targets) in a {
            let t = try XCTUnwrap(targets.first, name)
            XCTAssertEqual(targets.count, 1, "\(name) names several tensors: \(targets)")
            guard let u = b[name]?.first else { XCTFail("kohya name \(name) (single file \(t.weight)) has no pipeline tensor"); continue }
            let rows = try t.part.map { p in try XCTUnwrap(p.range(rows: single.entry(named: t.weight)!.info.shape[0])) }
            if rows != nil { fused += 1 }
            if t.transposed {
                // OpenCLIP's text_projection [hidden, proj] is transformers' weight transposed.
                let a = try floats(single, t.weight), b = try floats(pipeline, u.weight)
                let shape = try XCTUnwrap(single.entry(named: t.weight)).info.shape
                XCTAssertEqual(try XCTUnwrap(pipeline.entry(named: u.weight)).info.shape, shape.reversed(), name)
                XCTAssertEqual((0..<a.count).map { b[($0 % shape[1]) * shape[0] + $0 / shape[1]] }, a, name)
                compared += 1
                continue
            }
            XCTAssertEqual(try bytes(single, t.weight, rows: rows), try bytes(pipeline, u.weight), "\(name): \(t.weight) vs \(u.weight)")
            compared += 1
        }
        // Every UNet module of the pipeline is reached from the single file (by diffusers-numbered names).
        let unetWeights = pipeline.entries.map(\.info.name).filter { $0.hasPrefix("unet/") && $0.hasSuffix(".weight") }
        for w in unetWeights {
            let k = "lora_unet_" + SDModuleNames.underscored(String(w.dropFirst(5).dropLast(7)))
            XCTAssertNotNil(a[k], "pipeline \(w) has no module \(k) in the single file")
        }
        XCTAssertGreaterThan(compared, unetWeights.count)
        if file == sdxlFile { XCTAssertGreaterThan(fused, 0, "OpenCLIP in_proj parts were compared") }
    }

    func testSD15SingleFileNamesAgreeWithPipeline() throws {
        try checkSingleFileAgreesWithPipeline(file: sd15File, dir: sd15Dir)
    }

    func testSDXLSingleFileNamesAgreeWithPipeline() throws {
        guard FileManager.default.fileExists(atPath: sdxlFile), FileManager.default.fileExists(atPath: sdxlDir) else { throw XCTSkip("sdxl fixtures not present") }
        try checkSingleFileAgreesWithPipeline(file: sdxlFile, dir: sdxlDir)
    }

    /// A te2 text_projection LoRA on an SGM file lands transposed in OpenCLIP's [hidden, proj]
    /// parameter: the same values as in the pipeline's text_projection.weight, transposed.
    func testTextProjectionLoRAMergesTransposedIntoOpenCLIP() throws {
        guard FileManager.default.fileExists(atPath: sdxlFile), FileManager.default.fileExists(atPath: sdxlDir) else { throw XCTSkip("sdxl fixtures not present") }
        let dir = TestPaths.scratch(self)
        let pipeline = try TensorStore.open(sdxlDir)
        let w = try XCTUnwrap(pipeline.entry(named: "text_encoder_2/text_projection.weight")).info.shape
        let m = "lora_te2_text_projection"
        writeF32Safetensors(dir + "/tp.safetensors", [(m + ".lora_down.weight", [2, w[1]], sdTestValues(2 * w[1], seed: 5)),
                                                     (m + ".lora_up.weight", [w[0], 2], sdTestValues(2 * w[0], seed: 6)), (m + ".alpha", [], [1])])
        _ = try Merger.run(MergeOptions(base: sdxlDir, adapters: [(dir + "/tp.safetensors", 1)], output: dir + "/pipe"))
        _ = try Merger.run(MergeOptions(base: sdxlFile, adapters: [(dir + "/tp.safetensors", 1)], output: dir + "/single.safetensors"))
        let a = try TensorStore.open(dir + "/pipe"), b = try TensorStore.open(dir + "/single.safetensors")
        let x = try floats(a, "text_encoder_2/text_projection.weight"), y = try floats(b, "conditioner.embedders.1.model.text_projection")
        XCTAssertNotEqual(x, try floats(pipeline, "text_encoder_2/text_projection.weight"))
        XCTAssertEqual((0..<y.count).map { x[($0 % w[0]) * w[1] + $0 / w[0]] }, y)
    }

    func testUNetBlockMapRoundTripsBothWays() throws {
        for dir in [sd15Dir, sdxlDir] where FileManager.default.fileExists(atPath: dir) {
            let names = try TensorStore.open(dir).entries.map(\.info.name).compactMap { $0.hasPrefix("unet/") ? String($0.dropFirst(5)) : nil }
            let layout = try XCTUnwrap(UNetLayout(diffusersNames: names))
            let modules = names.filter { $0.hasSuffix(".weight") }.map { String($0.dropLast(7)) }
            let ldm = modules.map { layout.ldmPath($0) }
            XCTAssertEqual(ldm.filter { $0 == nil }.count, 0, "unmapped: \(zip(modules, ldm).filter { $0.1 == nil }.map(\.0).prefix(5))")
            let back = try XCTUnwrap(UNetLayout(ldmNames: ldm.compactMap { $0 }.map { $0 + ".weight" }))
            XCTAssertEqual(back.layersPerBlock, layout.layersPerBlock)
            for (m, l) in zip(modules, ldm) { XCTAssertEqual(back.diffusersPath(l!), m, "\(m) -> \(l!)") }
        }
        // SD1.x numbering with layers_per_block 2.
        let l = try XCTUnwrap(UNetLayout(diffusersNames: ["down_blocks.0.resnets.0.conv1.weight", "down_blocks.0.resnets.1.conv1.weight", "up_blocks.1.attentions.0.proj_in.weight"]))
        XCTAssertEqual(l.ldmPath("down_blocks.1.attentions.0.proj_in"), "input_blocks.4.1.proj_in")
        XCTAssertEqual(l.ldmPath("down_blocks.0.downsamplers.0.conv"), "input_blocks.3.0.op")
        XCTAssertEqual(l.ldmPath("down_blocks.2.resnets.1.time_emb_proj"), "input_blocks.8.0.emb_layers.1")
        XCTAssertEqual(l.ldmPath("up_blocks.0.upsamplers.0.conv"), "output_blocks.2.1.conv")
        XCTAssertEqual(l.ldmPath("up_blocks.1.upsamplers.0.conv"), "output_blocks.5.2.conv")
        XCTAssertEqual(l.ldmPath("mid_block.resnets.1.conv_shortcut"), "middle_block.2.skip_connection")
        XCTAssertEqual(l.ldmPath("add_embedding.linear_2"), "label_emb.0.2")
    }

    func testOpenCLIPFusedProjectionSplitsIntoThirds() throws {
        let names = ["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
                     "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias",
                     "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight",
                     "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"]
        let t = SDModuleNames(baseNames: names)
        let v = try XCTUnwrap(t.kohya["lora_te2_text_model_encoder_layers_0_self_attn_v_proj"]?.first)
        XCTAssertEqual(v.weight, names[0])
        XCTAssertEqual(v.bias, names[1])
        XCTAssertEqual(v.part, RowPart(index: 2, count: 3))
        XCTAssertEqual(v.part?.range(rows: 12), 8..<12)
        XCTAssertEqual(t.kohya["lora_te2_text_model_encoder_layers_0_mlp_fc1"]?.first?.weight, names[2])
        XCTAssertEqual(t.kohya["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"]?.first?.weight, names[3])
        XCTAssertEqual(t.diffusers["text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj"]?.first?.part, RowPart(index: 1, count: 3))
        let resolver = SDModuleNames.kohyaNaming.resolver(baseNames: names)
        XCTAssertEqual(resolver.resolve("lora_te2_text_model_encoder_layers_0_self_attn_k_proj.weight"), .found(names[0]))
        XCTAssertEqual(resolver.rowPart("lora_te2_text_model_encoder_layers_0_self_attn_k_proj.weight"), RowPart(index: 1, count: 3))
        XCTAssertEqual(resolver.rowPart("lora_te2_text_model_encoder_layers_0_mlp_fc1.weight"), nil)
    }

    // MARK: - kohya files made here

    /// A kohya LoRA + LoCon for the sd15 fixture in diffusers names: a linear attention
    /// projection (alpha 2 of rank 4), a 3x3 conv (LoCon, no alpha: alpha = r), a text
    /// encoder projection (alpha 8 of rank 2).
    func makeKohya(_ path: String, extra: [(String, [Int], [Float])] = []) throws -> [(module: String, tensor: String, down: [Float], downShape: [Int], up: [Float], upShape: [Int], scale: Double)] {
        let base = try TensorStore.open(sd15Dir)
        var specs: [(module: String, tensor: String, down: [Float], downShape: [Int], up: [Float], upShape: [Int], scale: Double)] = []
        var tensors: [(String, [Int], [Float])] = []
        for (i, (path, r, alpha)) in [("unet/down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", 4, 2.0 as Double?),
                                       ("unet/down_blocks.0.resnets.0.conv1.weight", 3, nil),
                                       ("text_encoder/text_model.encoder.layers.0.self_attn.q_proj.weight", 2, 8.0)].enumerated() {
            let shape = try XCTUnwrap(base.entry(named: path)).info.shape
            let component = path.hasPrefix("unet/") ? "lora_unet_" : "lora_te_"
            let module = component + SDModuleNames.underscored(String(path.split(separator: "/")[1].dropLast(7)))
            let downShape = [r] + Array(shape.dropFirst()), upShape = shape.count == 4 ? [shape[0], r, 1, 1] : [shape[0], r]
            let down = sdTestValues(downShape.reduce(1, *), seed: 3 * i + 1), up = sdTestValues(upShape.reduce(1, *), seed: 3 * i + 2)
            tensors += [(module + ".lora_down.weight", downShape, down), (module + ".lora_up.weight", upShape, up)]
            if let alpha { tensors.append((module + ".alpha", [], [Float(alpha)])) }
            specs.append((module, path, down, downShape, up, upShape, (alpha ?? Double(r)) / Double(r)))
        }
        writeF32Safetensors(path, tensors + extra)
        return specs
    }

    /// W + s·up·down in f64, rounded once to f32, and the size of the terms (|W| + |s|·Σ|up·down|).
    func reference(base: [Float], down: [Float], up: [Float], out: Int, r: Int, scale: Double, weight: Double = 1) -> [(value: Float, size: Double)] {
        let inner = down.count / r
        return (0..<base.count).map { idx in
            let i = idx / inner, j = idx % inner
            var s = 0.0, size = 0.0
            for k in 0..<r { s += Double(up[i * r + k]) * Double(down[k * inner + j]); size += abs(Double(up[i * r + k]) * Double(down[k * inner + j])) }
            return (Float(Double(base[idx]) + weight * scale * s), abs(Double(base[idx])) + abs(weight * scale) * size)
        }
    }

    /// How far f32 results are from the f64 reference, in f32 ulps of the terms' size (the
    /// engine sums in f32, so a result that cancels to near zero is not 1 ulp of itself).
    func maxTermULP(_ got: [Float], _ expected: [(value: Float, size: Double)]) -> Double {
        zip(got, expected).map { g, e in abs(Double(g) - Double(e.value)) / (max(e.size, 1e-30) * Double(Float.ulpOfOne)) }.max() ?? 0
    }

    func testKohyaLoRAAndLoConMergeIntoPipelineDirectory() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        let specs = try makeKohya(adapter)
        let opened = try KohyaFormat.open(adapter, options: AdapterOpenOptions())
        XCTAssertEqual(opened.kind, .kohyaLocon)
        XCTAssertEqual(opened.modules.count, 3)
        let before = readBytes(sd15Dir + "/unet/diffusion_pytorch_model.safetensors")
        let out = dir + "/merged"
        let summary = try Merger.run(MergeOptions(base: sd15Dir, adapters: [(adapter, 0.5)], output: out))
        XCTAssertEqual(summary.adapters.first?.kind, "kohya-locon")
        XCTAssertEqual(summary.mergedTensors, 3)
        XCTAssertEqual(readBytes(sd15Dir + "/unet/diffusion_pytorch_model.safetensors"), before, "input unmodified")
        // Layout: same files; unchanged component and top-level files byte-equal.
        let listing = try FileManager.default.subpathsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(listing, try FileManager.default.subpathsOfDirectory(atPath: sd15Dir).sorted())
        for f in ["model_index.json", "vae/diffusion_pytorch_model.safetensors", "vae/config.json", "unet/config.json", "text_encoder/config.json"] {
            XCTAssertEqual(readBytes(out + "/" + f), readBytes(sd15Dir + "/" + f), f)
        }
        let base = try TensorStore.open(sd15Dir), merged = try TensorStore.open(out)
        XCTAssertEqual(merged.layout, .components)
        var worst = 0.0, exact = 0, total = 0
        for s in specs {
            let expected = reference(base: try floats(base, s.tensor), down: s.down, up: s.up, out: s.upShape[0], r: s.downShape[0], scale: s.scale, weight: 0.5)
            let got = try floats(merged, s.tensor)
            worst = max(worst, maxTermULP(got, expected))
            exact += zip(got, expected).filter { $0.bitPattern == $1.value.bitPattern }.count
            total += got.count
        }
        // f32 base, f32 arithmetic against an f64 reference: within a few ulps of the terms
        // (r products and one add), most elements bit-equal.
        XCTAssertLessThanOrEqual(worst, 4)
        XCTAssertGreaterThan(exact, total / 2)
        // Every other tensor is bit-identical.
        let changed = Set(specs.map(\.tensor))
        for e in base.entries where !changed.contains(e.info.name) {
            XCTAssertEqual(try bytes(merged, e.info.name), try bytes(base, e.info.name), e.info.name)
        }
    }

    func testSameKohyaFileMergesIdenticallyIntoSingleFileLDMNames() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        let specs = try makeKohya(adapter)
        _ = try Merger.run(MergeOptions(base: sd15Dir, adapters: [(adapter, 1)], output: dir + "/pipe"))
        _ = try Merger.run(MergeOptions(base: sd15File, adapters: [(adapter, 1)], output: dir + "/single.safetensors"))
        let pipe = try TensorStore.open(dir + "/pipe"), single = try TensorStore.open(dir + "/single.safetensors")
        let names = SDModuleNames(baseNames: single.entries.map(\.info.name)).kohya
        for s in specs {
            let target = try XCTUnwrap(names[s.module]?.first)
            XCTAssertEqual(try bytes(single, target.weight), try bytes(pipe, s.tensor), "\(s.module): \(target.weight)")
        }
        let base = try TensorStore.open(sd15File)
        XCTAssertEqual(single.entries.map(\.info.name), base.entries.map(\.info.name), "LDM names pass through")
    }

    // MARK: - Every key used

    func categoryOf(_ body: () throws -> Void) -> (ErrorCategory?, String) {
        do { try body(); return (nil, "") } catch let e as CategorizedError { return (e.category, e.description) } catch { return (.internal, "\(error)") }
    }

    func testLeftoverKeysAreOneErrorListingThem() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        _ = try makeKohya(adapter, extra: [("lora_unet_conv_in.alpha", [], [1]), ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", [2, 8], sdTestValues(16, seed: 9)),
                                           ("text_projection_extra", [1], [0])])
        let (category, message) = categoryOf { _ = try KohyaFormat.open(adapter, options: AdapterOpenOptions()) }
        XCTAssertEqual(category, .malformedInput)
        XCTAssertTrue(message.contains("lora_te_text_model_encoder_layers_0_mlp_fc1"), message)
        // One error for the rest: the alpha-only module and the stray key.
        let (c2, m2) = categoryOf {
            let p = dir + "/stray.safetensors"
            _ = try makeKohya(p, extra: [("lora_unet_conv_in.alpha", [], [1]), ("text_projection_extra", [1], [0])])
            _ = try KohyaFormat.open(p, options: AdapterOpenOptions())
        }
        XCTAssertEqual(c2, .malformedInput)
        XCTAssertTrue(m2.contains("2 keys") && m2.contains("lora_unet_conv_in.alpha") && m2.contains("text_projection_extra"), m2)
        XCTAssertFalse(m2.contains("\n"))
    }

    func testModuleMatchingNoBaseTensorFailsTheMerge() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        _ = try makeKohya(adapter, extra: [("lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight", [1, 4], [1, 2, 3, 4]),
                                           ("lora_unet_down_blocks_9_resnets_0_conv1.lora_up.weight", [4, 1], [1, 2, 3, 4])])
        let (category, message) = categoryOf { _ = try Merger.run(MergeOptions(base: self.sd15Dir, adapters: [(adapter, 1)], output: dir + "/out")) }
        XCTAssertEqual(category, .malformedInput)
        XCTAssertTrue(message.contains("lora_unet_down_blocks_9_resnets_0_conv1"), message)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    }

    func testLyCORISAndUnsupportedKindsAreRefusedAsUnsupported() throws {
        let dir = TestPaths.scratch(self)
        let loha = dir + "/loha.safetensors"
        let m = "lora_unet_down_blocks_0_resnets_0_conv1"
        writeF32Safetensors(loha, [(m + ".hada_w1_a", [4, 2], sdTestValues(8, seed: 1)), (m + ".hada_w1_b", [2, 4], sdTestValues(8, seed: 2)),
                                   (m + ".alpha", [], [2])])
        if KohyaFormat.lycorisFamilies.isEmpty {
            let (category, message) = categoryOf { _ = try KohyaFormat.open(loha, options: AdapterOpenOptions()) }
            XCTAssertEqual(category, .unsupported)
            XCTAssertTrue(message.contains("LoHa") && message.contains(m + ".hada_w1_a"), message)
        }
        // Per-input-feature DoRA (wd_on_out=False) cannot be merged as PEFT's magnitude.
        let dora = dir + "/dora.safetensors"
        let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        writeF32Safetensors(dora, [(q + ".lora_down.weight", [1, 16], sdTestValues(16, seed: 1)), (q + ".lora_up.weight", [16, 1], sdTestValues(16, seed: 2)),
                                   (q + ".dora_scale", [1, 16], sdTestValues(16, seed: 3))])
        XCTAssertEqual(categoryOf { _ = try KohyaFormat.open(dora, options: AdapterOpenOptions()) }.0, .unsupported)
    }

    func testKohyaDoRAScaleIsTheMagnitude() throws {
        let dir = TestPaths.scratch(self)
        let path = dir + "/dora.safetensors"
        let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        writeF32Safetensors(path, [(q + ".lora_down.weight", [1, 16], sdTestValues(16, seed: 1)), (q + ".lora_up.weight", [16, 1], sdTestValues(16, seed: 2)),
                                   (q + ".dora_scale", [16, 1], sdTestValues(16, seed: 3).map { abs($0) + 0.5 })])
        let a = try KohyaFormat.open(path, options: AdapterOpenOptions())
        XCTAssertEqual(a.kind, .kohyaDora)
        XCTAssertEqual(a.modules.first?.magnitude?.elementCount, 16)
        XCTAssertEqual(a.modules.first?.scaling, 1, "no alpha: alpha = r")
    }

    func testProbeAndInspectSummary() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        _ = try makeKohya(adapter)
        XCTAssertTrue(KohyaFormat.probe(adapter))
        XCTAssertFalse(KohyaFormat.probe(sd15File), "a base checkpoint is not a kohya file")
        XCTAssertEqual(AdapterRegistry.format(of: adapter)?.id, .kohya)
        let report = try Inspector.inspect(adapter)
        XCTAssertEqual(report.kind, "kohya-adapter")
        XCTAssertEqual(report.modules?.count, 3)
        XCTAssertEqual(report.details?["rank"], "2-4")
        XCTAssertEqual(report.details?["alphas"], "2, 8")
        XCTAssertEqual(report.details?["lora_unet"], "2")
        XCTAssertEqual(report.details?["lora_te"], "1")
        XCTAssertEqual(report.details?["conv_modules"], "1")
        XCTAssertEqual(report.details?["adapter_kind"], "kohya-locon")
        XCTAssertEqual(report.tensors.count, 8)
    }

    /// A component may be sharded: it is read through its index and written back in the same
    /// shards (same stem, same --max-shard-size), with the same bytes as the unsharded merge.
    func testShardedComponentIsReadAndWrittenInShards() throws {
        let dir = TestPaths.scratch(self)
        let pipe = dir + "/pipe"
        try FileManager.default.createDirectory(atPath: pipe, withIntermediateDirectories: true)
        for item in ["model_index.json", "text_encoder", "vae"] {
            try FileManager.default.copyItem(atPath: sd15Dir + "/" + item, toPath: pipe + "/" + item)
        }
        _ = try Converter.run(ConvertOptions(input: sd15Dir + "/unet", output: pipe + "/unet", maxShardSize: 40_000))
        let shards = try FileManager.default.contentsOfDirectory(atPath: pipe + "/unet").sorted()
        XCTAssertTrue(shards.contains("model.safetensors.index.json"), "\(shards)")
        let adapter = dir + "/lora.safetensors"
        let specs = try makeKohya(adapter)
        let sharded = try TensorStore.open(pipe)
        XCTAssertEqual(sharded.components.first { $0.name == "unet" }?.store.layout, .sharded(indexName: "model.safetensors.index.json"))
        _ = try Merger.run(MergeOptions(base: pipe, adapters: [(adapter, 1)], output: dir + "/out-sharded", maxShardSize: 40_000))
        _ = try Merger.run(MergeOptions(base: sd15Dir, adapters: [(adapter, 1)], output: dir + "/out-plain"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/out-sharded/unet").sorted(), shards)
        let a = try TensorStore.open(dir + "/out-sharded"), b = try TensorStore.open(dir + "/out-plain")
        XCTAssertEqual(Set(a.entries.map(\.info.name)), Set(b.entries.map(\.info.name)))
        for s in specs { XCTAssertEqual(try bytes(a, s.tensor), try bytes(b, s.tensor), s.tensor) }
    }

    func testPipelineOutputMustBeADirectoryAndConvertRefusesPipelines() throws {
        let dir = TestPaths.scratch(self)
        let adapter = dir + "/lora.safetensors"
        _ = try makeKohya(adapter)
        XCTAssertEqual(categoryOf { _ = try Merger.run(MergeOptions(base: self.sd15Dir, adapters: [(adapter, 1)], output: dir + "/x.safetensors")) }.0, .usage)
        XCTAssertEqual(categoryOf { _ = try Converter.run(ConvertOptions(input: self.sd15Dir, output: dir + "/c")) }.0, .unsupported)
        // Output inside the input pipeline is refused before anything is written.
        XCTAssertEqual(categoryOf { _ = try Merger.run(MergeOptions(base: self.sd15Dir, adapters: [(adapter, 1)], output: self.sd15Dir + "/merged")) }.0, .outputConflict)
    }
}

/// The committed fixture cases (fixtures/sd/cases.json, made by make_sd_fixtures.py from
/// diffusers/PEFT and the formulas): every kohya case merged into every base it lists must
/// give the expected tensors, every module must land where the manifest says, and every
/// other tensor must be untouched.
final class SDFixtureCaseTests: XCTestCase {
    struct Case {
        var name: String, kind: String, adapter: String, keys: Int
        var bases: [String]
        var expected: [String: Any]
        var modules: [String: [String: [String: Any]]]
    }

    static func cases() throws -> (bases: [String: [String: Any]], cases: [Case]) {
        let path = TestPaths.fixture("sd/cases.json")
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("fixtures/sd/cases.json not present") }
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(readBytes(path))) as? [String: Any])
        let bases = try XCTUnwrap(json["bases"] as? [String: [String: Any]])
        let cases = try XCTUnwrap(json["cases"] as? [[String: Any]]).map { c in
            Case(name: c["name"] as? String ?? "", kind: c["kind"] as? String ?? "", adapter: TestPaths.fixture("sd/" + (c["adapter"] as? String ?? "")),
                 keys: c["adapter_keys"] as? Int ?? -1, bases: c["bases"] as? [String] ?? [], expected: c["expected"] as? [String: Any] ?? [:],
                 modules: c["modules"] as? [String: [String: [String: Any]]] ?? [:])
        }
        return (bases, cases)
    }

    static func halves(_ raw: UnsafeRawBufferPointer) -> [UInt16] {
        (0..<(raw.count / 2)).map { UInt16(raw[2 * $0]) | UInt16(raw[2 * $0 + 1]) << 8 }
    }

    /// Sign-magnitude 16-bit float bits as integers in value order (adjacent values differ by 1).
    static func ordered(_ bits: UInt16) -> Int { bits & 0x8000 != 0 ? -Int(bits & 0x7fff) : Int(bits) }

    func testKohyaCasesMergeToTheExpectedTensors() throws {
        let (bases, cases) = try Self.cases()
        let scratch = TestPaths.scratch(self)
        var merged = 0, notBitEqual = 0, compared = 0
        var worst: [String: Double] = [:]
        var notBitEqualBy: [String: Int] = [:], comparedBy: [String: Int] = [:]
        for c in cases where AdapterRegistry.format(of: c.adapter)?.id == .kohya {
            let adapter: Adapter
            do { adapter = try KohyaFormat.open(c.adapter, options: AdapterOpenOptions()) } catch let e as AdapterError where e.category == .unsupported && KohyaFormat.lycorisFamilies.isEmpty {
                continue   // LyCORIS kinds: KohyaFormat+LyCORIS.swift (sdlyco) reads them.
            }
            XCTAssertEqual(adapter.details["keys"], String(c.keys), c.name)
            for baseID in c.bases {
                let info = try XCTUnwrap(bases[baseID], baseID)
                let basePath = TestPaths.fixture("sd/" + (info["path"] as? String ?? ""))
                let base = try TensorStore.open(basePath)
                // Names: every module resolves where the manifest says.
                let resolver = adapter.naming.resolver(baseNames: base.entries.map(\.info.name))
                for (module, perBase) in c.modules {
                    guard let want = perBase[baseID]?["tensor"] as? String else { continue }
                    XCTAssertEqual(resolver.resolve(module + ".weight"), .found(want), "\(c.name) \(baseID) \(module)")
                    if let rows = perBase[baseID]?["rows"] as? [Int], rows.count == 2, let e = base.entry(named: want) {
                        XCTAssertEqual(resolver.rowPart(module + ".weight")?.range(rows: e.info.shape[0]), rows[0]..<rows[1], "\(c.name) \(module) rows")
                    }
                }
                let single = !FileSystem.isDirectory(basePath)
                let out = scratch + "/\(c.name)-\(baseID)" + (single ? ".safetensors" : "")
                _ = try Merger.run(MergeOptions(base: basePath, adapters: [(c.adapter, 1)], output: out))
                merged += 1
                let result = try TensorStore.open(out)
                // (expected file, prefix of its names in the merged store)
                var files: [(String, String)] = []
                if let f = c.expected[baseID] as? String { files.append((f, "")) }
                if let perComponent = c.expected[baseID] as? [String: String] { files += perComponent.map { ($0.value, $0.key + "/") } }
                XCTAssertFalse(files.isEmpty, "\(c.name): no expected files for \(baseID)")
                var changed = Set<String>()
                for (file, prefix) in files {
                    let expected = try TensorStore.open(TestPaths.fixture("sd/" + file))
                    for e in expected.entries {
                        let name = prefix + e.info.name
                        changed.insert(name)
                        let got = try XCTUnwrap(result.entry(named: name), "\(c.name): merged output has no \(name)")
                        XCTAssertEqual(got.info.dtype, e.info.dtype, name)
                        let g = try TensorData.stored(result, got).floats(), x = try TensorData.stored(expected, e).floats()
                        let b = try TensorData.stored(base, try XCTUnwrap(base.entry(named: name))).floats()
                        compared += g.count
                        comparedBy[e.info.dtype.rawValue, default: 0] += g.count
                        let halfBits = e.info.dtype.byteWidth == 2 ? (Self.halves(result.data(got)), Self.halves(expected.data(e))) : nil
                        for i in g.indices where g[i].bitPattern != x[i].bitPattern {
                            notBitEqual += 1
                            notBitEqualBy[e.info.dtype.rawValue, default: 0] += 1
                            let distance: Double
                            if let (gh, xh) = halfBits {
                                // 16-bit bases: ulps of the stored dtype (f32 work, one rounding).
                                distance = Double(abs(Self.ordered(gh[i]) - Self.ordered(xh[i])))
                            } else {
                                // f32 bases: the engine's f32 sum against the f64 reference, in
                                // ulps of the larger of |W| and |ΔW|.
                                let size = max(abs(Double(b[i])), abs(Double(x[i]) - Double(b[i])), 1e-30)
                                distance = abs(Double(g[i]) - Double(x[i])) / (size * Double(Float.ulpOfOne))
                            }
                            worst[e.info.dtype.rawValue] = max(worst[e.info.dtype.rawValue] ?? 0, distance)
                        }
                    }
                }
                for e in base.entries where !changed.contains(e.info.name) {
                    XCTAssertEqual([UInt8](result.data(try XCTUnwrap(result.entry(named: e.info.name)))), [UInt8](base.data(e)), "\(c.name): \(e.info.name) changed")
                }
            }
        }
        XCTAssertGreaterThan(merged, 0, "no kohya case was merged")
        print("SD fixture cases: \(merged) merges, \(compared) values, \(notBitEqual) not bit-equal (\(notBitEqualBy) of \(comparedBy)), worst (ulps of the terms) \(worst)")
        // f32 bases: the f32 sum of r products loses a few ulps where they cancel (seen: 17.5
        // ulps of max(|W|, |ΔW|)); a wrong scale or target would be millions.
        XCTAssertLessThanOrEqual(worst["F32"] ?? 0, 32)
        XCTAssertLessThanOrEqual(worst["F16"] ?? 0, 1)
        XCTAssertLessThanOrEqual(worst["BF16"] ?? 0, 1)
    }
}
