import Foundation
import XCTest
@testable import OpConvertKit

/// `train` on a small random network: gradients against finite differences, determinism,
/// and the saved adapter / OP checkpoint merging into a model that predicts exactly what the
/// adapted model predicted during training.
final class TrainingTests: XCTestCase {
    /// A 12 -> 9 -> 7 -> 5 ReLU network and 40 labelled rows, written with opconvert's writer.
    func makeProblem(_ dir: String, seed: UInt64 = 1) throws -> (base: String, data: String) {
        var rng = SeededRandom(seed: seed)
        let dims = [12, 9, 7, 5]
        var tensors: [(TensorSpec, [UInt8])] = []
        for l in 0..<3 {
            let w = (0..<(dims[l + 1] * dims[l])).map { _ in rng.normal() * 0.5 }
            let b = (0..<dims[l + 1]).map { _ in rng.normal() * 0.1 }
            tensors.append((TensorSpec(name: "layers.\(l).weight", dtype: .f32, shape: [dims[l + 1], dims[l]]), w.bytes))
            tensors.append((TensorSpec(name: "layers.\(l).bias", dtype: .f32, shape: [dims[l + 1]]), b.bytes))
        }
        let base = dir + "/net.safetensors"
        try SafetensorsWriter.write(path: base, tensors: tensors, metadata: ["format": "pt"])
        let n = 40
        let x = (0..<(n * 12)).map { _ in rng.normal() }
        let y = (0..<n).map { _ in Int64(rng.next() % 5) }
        let data = dir + "/data.safetensors"
        try SafetensorsWriter.write(path: data, tensors: [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [n, 12]), x.bytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [n]), y.withUnsafeBytes { [UInt8]($0) }),
        ], metadata: nil)
        return (base, data)
    }

    func testGradientsMatchFiniteDifferencesForEveryMethod() throws {
        let dir = TestPaths.scratch(self)
        let (base, data) = try makeProblem(dir)
        for method in AdapterMethod.allCases {
            var o = TrainOptions(base: base, data: data)
            o.method = method
            o.layers = ["layers.0", "layers.2"]
            o.rank = 2
            o.mlpHidden = 3
            o.zDim = 4
            let trainer = try Trainer(options: o)
            let ctx = trainer.ctx
            let rows = 0..<40
            let (ws, dl) = try trainer.makeWorkspace(rows: 40)
            // Move away from the init, where B = 0 makes many gradients vanish.
            for a in trainer.adapters {
                for p in a.parameters {
                    var v = try ctx.download(p.value)
                    var rng = SeededRandom(seed: UInt64(p.count))
                    for i in v.indices { v[i] += rng.normal() * 0.3 }
                    try ctx.upload(v, to: p.value)
                }
            }
            _ = try trainer.gradients(batch: Array(rows)[...], workspace: ws, dlogits: dl)
            var checked = 0, skipped = 0
            for a in trainer.adapters {
                for p in a.parameters {
                    let grad = try ctx.download(p.grad)
                    let value = try ctx.download(p.value)
                    for i in stride(from: 0, to: p.count, by: max(1, p.count / 5)) {
                        func central(_ h: Float) throws -> Float {
                            var plus = value, minus = value
                            plus[i] += h
                            minus[i] -= h
                            try ctx.upload(plus, to: p.value)
                            let lp = try trainer.loss(batch: Array(rows)[...], workspace: ws, dlogits: dl)
                            try ctx.upload(minus, to: p.value)
                            let lm = try trainer.loss(batch: Array(rows)[...], workspace: ws, dlogits: dl)
                            try ctx.upload(value, to: p.value)
                            return (lp - lm) / (2 * h)
                        }
                        let numeric = try central(4e-3), finer = try central(2e-3)
                        // A ReLU kink within ±h makes the difference quotient meaningless:
                        // only smooth points (both step sizes agree) are compared.
                        guard abs(numeric - finer) <= 1e-3 + 0.01 * abs(finer) else { skipped += 1; continue }
                        XCTAssertEqual(grad[i], finer, accuracy: 1e-3 + 0.02 * abs(finer),
                                       "\(method.rawValue) \(a.name) \(p.name)[\(i)]")
                        checked += 1
                    }
                }
            }
            XCTAssertGreaterThan(checked, 10, method.rawValue)
            XCTAssertLessThan(skipped, checked / 4 + 1, "\(method.rawValue): too many non-smooth points")
        }
    }

    /// Host forward pass of a base network (for checking merged weights independently).
    static func forward(_ net: BaseNetwork, _ x: [Float], rows: Int) -> [Float] {
        var a = x
        for (l, layer) in net.layers.enumerated() {
            var z = [Float](repeating: 0, count: rows * layer.outFeatures)
            for r in 0..<rows {
                for o in 0..<layer.outFeatures {
                    var s = Double(layer.bias[o])
                    for i in 0..<layer.inFeatures { s += Double(layer.weight[o * layer.inFeatures + i]) * Double(a[r * layer.inFeatures + i]) }
                    z[r * layer.outFeatures + o] = Float(s)
                }
            }
            a = l < net.layers.count - 1 ? z.map { max($0, 0) } : z
        }
        return a
    }

    func testSavedAdaptersMergeIntoTheModelThatWasTrained() throws {
        let dir = TestPaths.scratch(self)
        let (base, data) = try makeProblem(dir)
        let dataset = try Dataset.load(data)
        for method in AdapterMethod.allCases {
            var o = TrainOptions(base: base, data: data)
            o.method = method
            o.rank = 3
            o.mlpHidden = 4
            o.zDim = 4
            o.lr = 3e-2
            o.epochs = 3
            o.batchSize = 16
            o.output = dir + "/" + method.rawValue
            let trainer = try Trainer(options: o)
            let summary = try trainer.run()
            XCTAssertLessThan(summary.finalLoss, summary.firstLoss, method.rawValue)
            let predicted = try trainer.predict(dataset.inputs)
            // merge takes the OP checkpoint or the PEFT adapter directly.
            let merged = dir + "/merged-\(method.rawValue).safetensors"
            _ = try Merger.run(MergeOptions(base: base, adapters: [(o.output!, 1)], output: merged, showProgress: false))
            let logits = Self.forward(try BaseNetwork.load(merged), dataset.inputs, rows: dataset.count)
            for i in logits.indices {
                XCTAssertEqual(logits[i], predicted[i], accuracy: 1e-4 * max(1, abs(predicted[i])), "\(method.rawValue) logit \(i)")
            }
            if method.usesHypernetwork {
                // materialize -> PEFT adapter -> merge gives the same weights bit for bit.
                _ = try Materializer.run(MaterializeOptions(checkpoint: o.output!, output: dir + "/mat-\(method.rawValue)"))
                let viaAdapter = dir + "/merged2-\(method.rawValue).safetensors"
                _ = try Merger.run(MergeOptions(base: base, adapters: [(dir + "/mat-\(method.rawValue)", 1)], output: viaAdapter, showProgress: false))
                XCTAssertEqual(readBytes(viaAdapter), readBytes(merged), method.rawValue)
            }
        }
    }

    func testSameSeedSameBytes() throws {
        let dir = TestPaths.scratch(self)
        let (base, data) = try makeProblem(dir)
        for run in 0..<2 {
            var o = TrainOptions(base: base, data: data)
            o.method = .opDora
            o.epochs = 2
            o.output = dir + "/run\(run)"
            o.lossCSV = dir + "/loss\(run).csv"
            _ = try Trainer(options: o).run()
        }
        XCTAssertEqual(readBytes(dir + "/run0/op_model.safetensors"), readBytes(dir + "/run1/op_model.safetensors"))
        XCTAssertEqual(readBytes(dir + "/loss0.csv"), readBytes(dir + "/loss1.csv"))
        XCTAssertTrue(String(decoding: readBytes(dir + "/loss0.csv"), as: UTF8.self).hasPrefix("step,epoch,lr,loss,accuracy\n0,0,"))
    }

    func testSchedulesAndFactorization() throws {
        XCTAssertEqual(LRSchedule.linear.factor(step: 0, total: 100, warmup: 10), 0)
        XCTAssertEqual(LRSchedule.linear.factor(step: 5, total: 100, warmup: 10), 0.5)
        XCTAssertEqual(LRSchedule.linear.factor(step: 55, total: 100, warmup: 10), 0.5)
        XCTAssertEqual(LRSchedule.cosine.factor(step: 10, total: 110, warmup: 10), 1)
        XCTAssertEqual(LRSchedule.cosine.factor(step: 60, total: 110, warmup: 10), 0.5, accuracy: 1e-12)
        XCTAssertEqual(LRSchedule.constant.factor(step: 99, total: 100, warmup: 10), 1)
        // SVD optimum of a rank-2 matrix at rank 2 is 0; at rank 1 it is σ2².
        let m: [Float] = [3, 0, 0, 0, 2, 0]   // 2x3, singular values 3, 2
        XCTAssertEqual(try Factorizer.svdTail(m, rows: 2, cols: 3, rank: 1), 4, accuracy: 1e-9)
        XCTAssertEqual(try Factorizer.svdTail(m, rows: 2, cols: 3, rank: 2), 0, accuracy: 1e-9)
        var o = FactorizeOptions()
        o.randomShape = (20, 15)
        o.rank = 3
        o.steps = 300
        o.lr = 5e-3
        let r = try Factorizer.run(o)
        XCTAssertEqual(r.runs.map(\.method), ["mf", "op-mf"])
        for run in r.runs {
            XCTAssertGreaterThanOrEqual(run.finalError, r.svdOptimum * (1 - 1e-4), "nothing beats the SVD")
            XCTAssertLessThan(run.finalError, run.errorAtStep[0], "\(run.method) makes progress")
        }
    }
}
