import OpConvertCore
import OpConvertTensors
import COpenBLAS

/// A module's LoRA factors (and DoRA magnitude) produced by its hypernetwork.
public struct MaterializedModule: Sendable {
    public var path: String
    public var a: [Float]
    public var aShape: [Int]
    public var b: [Float]
    public var bShape: [Int]
    public var magnitude: [Float]?
    public var rank: Int

    package init(path: String, a: [Float], aShape: [Int], b: [Float], bShape: [Int], magnitude: [Float]?, rank: Int) {
        self.path = path; self.a = a; self.aShape = aShape; self.b = b; self.bShape = bShape
        self.magnitude = magnitude; self.rank = rank
    }
}

extension OPCheckpoint {
    /// The adapted weight's LoRA-oriented shape: out features and A's trailing dims.
    /// From the base when given, else from shapes recorded by opconvert's trainer, else
    /// from what the checkpoint itself pins down (separate MLPs, a magnitude head).
    public func loraShape(of module: OPModule, base: TensorStore?) throws -> (out: Int, inner: [Int]) {
        let r = module.rank
        if let base {
            switch ModuleResolver(names: base.entries.map(\.info.name)).resolve(module.path + ".weight") {
            case let .found(name):
                let w = base.entry(named: name)!.info.shape
                if config.peft.fanInFanOut && w.count == 2 { return (w[1], [w[0]]) }
                guard w.count >= 2 else { throw OPError.badShape(path: path, module: module.path, reason: "base tensor \(name) has shape \(w), not a weight matrix") }
                return (w[0], Array(w.dropFirst()))
            case .none:
                throw AdapterError.unmatchedModules(adapter: path, modules: [module.path], hint: "")
            case let .ambiguous(c):
                throw AdapterError.ambiguousModule(adapter: path, module: module.path, candidates: c)
            }
        }
        if let s = recordedShapes[module.path], s.count >= 2 { return (s[0], Array(s.dropFirst())) }
        switch module.generator {
        case let .separate(a, b):
            return (b.outputSize / r, [a.outputSize / r])
        case let .joint(g):
            if let m = module.magnitudeWeight {
                let out = m.shape[0]
                return (out, [g.outputSize / r - out])
            }
            throw OPError.unknownShape(path: path, module: module.path)
        }
    }

    /// The module's A, B (and m) shapes as PEFT stores them: A (r, in...), B (out, r, 1...).
    public func adapterLayout(of module: OPModule, base: TensorStore?) throws -> AdapterModuleLayout {
        let (out, inner) = try loraShape(of: module, base: base)
        return AdapterModuleLayout(path: module.path, aShape: [module.rank] + inner,
                                   bShape: [out, module.rank] + Array(repeating: 1, count: max(0, inner.count - 1)),
                                   magnitudeCount: module.isDoRA ? out : nil)
    }

    /// Runs every module's hypernetwork once in f32.
    public func materialize(base: TensorStore?) throws -> [MaterializedModule] {
        try modules.map { try materialize($0, base: base) }
    }

    public func materialize(_ module: OPModule, base: TensorStore?) throws -> MaterializedModule {
        let layout = try adapterLayout(of: module, base: base)
        let r = module.rank, out = layout.bShape[0]
        let aShape = layout.aShape, bShape = layout.bShape
        let inFlat = aShape.dropFirst().reduce(1, *)
        var a: [Float], b: [Float], hidden: [Float]
        switch module.generator {
        case let .joint(g):
            guard g.outputSize == r * inFlat + out * r else {
                throw OPError.badShape(path: path, module: module.path, reason: "fc2 produces \(g.outputSize) values but r*in + out*r = \(r)*\(inFlat) + \(out)*\(r) = \(r * inFlat + out * r)")
            }
            hidden = try Self.hiddenLayer(g)
            let v = try Self.outputLayer(g, hidden: hidden)
            a = Array(v[0..<(r * inFlat)])
            b = Array(v[(r * inFlat)...])
        case let .separate(ga, gb):
            guard ga.outputSize == r * inFlat, gb.outputSize == out * r else {
                throw OPError.badShape(path: path, module: module.path, reason: "op_mlp_A/op_mlp_B produce \(ga.outputSize)/\(gb.outputSize) values; expected r*in = \(r * inFlat) and out*r = \(out * r)")
            }
            hidden = try Self.hiddenLayer(ga)
            a = try Self.outputLayer(ga, hidden: hidden)
            b = try Self.outputLayer(gb, hidden: try Self.hiddenLayer(gb))
        }
        var magnitude: [Float]?
        if let w = module.magnitudeWeight, let bias = module.magnitudeBias {
            guard w.shape[0] == out else {
                throw OPError.badShape(path: path, module: module.path, reason: "magnitude head has \(w.shape[0]) outputs but the layer has \(out) output features")
            }
            var m = try Self.linear(weight: w, bias: bias, input: hidden)
            if let offset = module.magnitudeOffset {
                let o = try offset.floats()
                for i in m.indices { m[i] += o[i] }
            }
            magnitude = m
        }
        if !a.allSatisfy({ $0.isFinite }) { throw OPError.nonFinite(path: path, module: module.path, what: "lora_A") }
        if !b.allSatisfy({ $0.isFinite }) { throw OPError.nonFinite(path: path, module: module.path, what: "lora_B") }
        if let m = magnitude, !m.allSatisfy({ $0.isFinite }) { throw OPError.nonFinite(path: path, module: module.path, what: "magnitude") }
        return MaterializedModule(path: module.path, a: a, aShape: aShape, b: b, bShape: bShape, magnitude: magnitude, rank: r)
    }

    /// The checkpoint as an in-memory adapter, ready to merge.
    public func adapter(base: TensorStore?) throws -> LoraAdapter {
        let mats = try materialize(base: base)
        let cfg = try LoraConfig(json: materializedPEFTConfig, path: path)
        let modules = mats.map { m in
            LoraModule(path: m.path, a: .memory(values: m.a, shape: m.aShape), b: .memory(values: m.b, shape: m.bShape),
                       magnitude: m.magnitude.map { .memory(values: $0, shape: [$0.count]) },
                       rank: m.rank, scaling: cfg.scaling(for: m.path), fanInFanOut: cfg.fanInFanOut)
        }
        return Adapter(path: path, kind: isDoRA ? .opDora : .opLora, modules: modules)
    }

    /// peft_config with use_dora set when the checkpoint has magnitude heads.
    public var materializedPEFTConfig: JSONValue {
        isDoRA ? config.peftJSON.setting("use_dora", to: .bool(true)) : config.peftJSON
    }

    // MARK: the MLP, in f32

    /// h = ReLU(W1 z + c1).
    static func hiddenLayer(_ m: OPMLP) throws -> [Float] {
        try linear(weight: m.fc1Weight, bias: m.fc1Bias, input: try m.z.floats()).map { max($0, 0) }
    }

    /// v = W2 h + c2.
    static func outputLayer(_ m: OPMLP, hidden: [Float]) throws -> [Float] {
        try linear(weight: m.fc2Weight, bias: m.fc2Bias, input: hidden)
    }

    /// y = W x + b with W [rows, cols] streamed in row blocks (W2 can be gigabytes): f32
    /// weights are used in place, others decoded block by block.
    static func linear(weight: TensorData, bias: TensorData, input: [Float]) throws -> [Float] {
        let rows = weight.shape[0], cols = weight.shape.count > 1 ? weight.shape[1] : 1
        var y = try bias.floats()
        guard rows > 0, cols > 0 else { return y }
        switch weight {
        case let .memory(values, _):
            gemv(values, rows: rows, cols: cols, x: input, y: &y, rowStart: 0)
        case .computed:
            gemv(try weight.floats(), rows: rows, cols: cols, x: input, y: &y, rowStart: 0)
        case let .stored(store, entry):
            let src = store.data(entry)
            let dtype = entry.info.dtype
            let aligned = Int(bitPattern: src.baseAddress) % MemoryLayout<Float>.alignment == 0
            if dtype == .f32 && aligned {
                let p = src.baseAddress!.assumingMemoryBound(to: Float.self)
                input.withUnsafeBufferPointer { x in
                    y.withUnsafeMutableBufferPointer { yy in
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, p, Int32(cols), x.baseAddress!, 1, 1, yy.baseAddress!, 1)
                    }
                }
            } else {
                let blockRows = max(1, (1 << 20) / cols)
                var block = [Float](repeating: 0, count: blockRows * cols)
                var r0 = 0
                let width = dtype.byteWidth!
                while r0 < rows {
                    let nr = min(blockRows, rows - r0)
                    block.withUnsafeMutableBufferPointer { b in
                        DTypeConversion.decode(src.baseAddress! + r0 * cols * width, dtype, to: b.baseAddress!, count: nr * cols)
                    }
                    gemv(block, rows: nr, cols: cols, x: input, y: &y, rowStart: r0)
                    r0 += nr
                }
            }
            store.files[entry.file].release(entry.info)
        }
        return y
    }

    private static func gemv(_ w: [Float], rows: Int, cols: Int, x: [Float], y: inout [Float], rowStart: Int) {
        w.withUnsafeBufferPointer { wp in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, wp.baseAddress!, Int32(cols),
                                xp.baseAddress!, 1, 1, yp.baseAddress! + rowStart, 1)
                }
            }
        }
    }
}
