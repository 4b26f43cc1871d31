import Foundation
import XCTest
@testable import OpConvertKit

/// `train` and `train factorize` refuse bad flags, bases and datasets with a one-line error
/// of the right class, and a diverging fine-tune run stops before anything is saved.
final class TrainingRefusalTests: XCTestCase {
    /// Layer widths of the test network: 12 -> 9 -> 7 -> 5.
    static let dims = [12, 9, 7, 5]

    func writeBase(_ path: String, tensors: [(TensorSpec, [UInt8])], metadata: [String: String]? = ["format": "pt"]) throws {
        try SafetensorsWriter.write(path: path, tensors: tensors, metadata: metadata)
    }

    /// The tensors of a small random ReLU network (layers.0 ... layers.2).
    func networkTensors(seed: UInt64 = 1) -> [(TensorSpec, [UInt8])] {
        var rng = SeededRandom(seed: seed)
        var tensors: [(TensorSpec, [UInt8])] = []
        for l in 0..<3 {
            let (o, i) = (Self.dims[l + 1], Self.dims[l])
            tensors.append((TensorSpec(name: "layers.\(l).weight", dtype: .f32, shape: [o, i]), (0..<(o * i)).map { _ in rng.normal() * 0.5 }.bytes))
            tensors.append((TensorSpec(name: "layers.\(l).bias", dtype: .f32, shape: [o]), (0..<o).map { _ in rng.normal() * 0.1 }.bytes))
        }
        return tensors
    }

    func dataTensors(rows: Int = 40, features: Int = 12, classes: Int64 = 5, seed: UInt64 = 2) -> [(TensorSpec, [UInt8])] {
        var rng = SeededRandom(seed: seed)
        let x = (0..<(rows * features)).map { _ in rng.normal() }
        let y = (0..<rows).map { _ in Int64(rng.next() % UInt64(classes)) }
        return [
            (TensorSpec(name: "inputs", dtype: .f32, shape: [rows, features]), x.bytes),
            (TensorSpec(name: "labels", dtype: .i64, shape: [rows]), y.withUnsafeBytes { [UInt8]($0) }),
        ]
    }

    /// A valid base and dataset in a fresh directory.
    func makeProblem() throws -> (dir: String, base: String, data: String) {
        let dir = TestPaths.scratch(self)
        let base = dir + "/net.safetensors", data = dir + "/data.safetensors"
        try writeBase(base, tensors: networkTensors())
        try SafetensorsWriter.write(path: data, tensors: dataTensors(), metadata: nil)
        return (dir, base, data)
    }

    /// Runs `body`, which must throw a TrainError of `status` whose message contains `fragments`.
    func assertRefused(_ status: ExitStatus, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line,
                       _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("accepted; expected a refusal mentioning \(fragments)", file: file, line: line)
        } catch let error as TrainError {
            XCTAssertEqual(ExitStatus.of(error), status, "\(error)", file: file, line: line)
            let message = error.description
            XCTAssertFalse(message.contains("\n"), "one line: \(message)", file: file, line: line)
            for f in fragments { XCTAssertTrue(message.contains(f), "\"\(message)\" should mention \(f)", file: file, line: line) }
        } catch {
            XCTFail("wrong error type \(type(of: error)): \(error)", file: file, line: line)
        }
    }

    // MARK: - Flags

    func testFlagValuesThatWouldTrapOrMeanNothingAreUsageErrors() throws {
        let (_, base, data) = try makeProblem()
        let cases: [(String, (inout TrainOptions) -> Void)] = [
            ("--rank", { $0.rank = 0 }), ("--rank", { $0.rank = -3 }),
            ("--batch-size", { $0.batchSize = 0 }), ("--epochs", { $0.epochs = 0 }), ("--epochs", { $0.epochs = -1 }),
            ("--mlp-hidden", { $0.mlpHidden = 0 }), ("--z-dim", { $0.zDim = 0 }),
            ("--lr", { $0.lr = -1e-3 }), ("--lr", { $0.lr = .nan }), ("--lr", { $0.lr = .infinity }), ("--lr", { $0.lr = 0 }),
            ("--lr", { $0.lr = 1e39 }), ("--lr", { $0.lr = 1e-50 }),  // fine as Doubles, inf and 0 in the f32 the kernels take
            ("--threads", { $0.threads = -2 }), ("--warmup-steps", { $0.warmupSteps = -1 }),
            ("--alpha", { $0.alpha = .nan }), ("--alpha", { $0.alpha = 0 }),
            ("--weight-decay", { $0.weightDecay = -0.1 }), ("--weight-decay", { $0.weightDecay = .infinity }),
            ("beta1", { $0.beta1 = 1 }), ("beta2", { $0.beta2 = -0.5 }), ("eps", { $0.eps = 0 }),
            ("--max-loss-growth", { $0.maxLossGrowth = 1 }), ("--max-loss-growth", { $0.maxLossGrowth = .nan }),
            ("--layers", { $0.layers = [] }), ("--layers", { $0.layers = ["layers.0", ""] }),
        ]
        for (flag, change) in cases {
            var o = TrainOptions(base: base, data: data)
            change(&o)
            assertRefused(.usage, [flag]) { try o.validate() }
            // The trainer runs the same checks (library callers skip the CLI).
            assertRefused(.usage, [flag]) { _ = try Trainer(options: o) }
        }
        var fine = TrainOptions(base: base, data: data)
        fine.maxLossGrowth = .infinity
        XCTAssertNoThrow(try fine.validate(), "inf turns the growth check off")
    }

    func testRankLargerThanAnAdaptedLayerAllowsIsRefused() throws {
        let (_, base, data) = try makeProblem()
        for method in AdapterMethod.allCases {
            var o = TrainOptions(base: base, data: data)
            o.method = method
            o.rank = 6  // layers.2 is 7 -> 5: at most rank 5
            assertRefused(.usage, ["--rank 6", "layers.2", "[5, 7]", "at most 5"]) { _ = try Trainer(options: o) }
            o.layers = ["layers.0"]  // 12 -> 9 holds rank 6
            XCTAssertNoThrow(try Trainer(options: o), method.rawValue)
            o.rank = 10
            assertRefused(.usage, ["--rank 10", "layers.0", "at most 9"]) { _ = try Trainer(options: o) }
        }
    }

    func testHugeSizesAreRefusedBeforeAnythingIsAllocated() throws {
        let (_, base, data) = try makeProblem()
        var o = TrainOptions(base: base, data: data)
        o.mlpHidden = Int.max / 2  // rank x (in + out) x hidden overflows Int
        assertRefused(.usage, ["--mlp-hidden"]) { _ = try Trainer(options: o) }
        o.mlpHidden = 100_000_000  // no overflow, but 4 * 84 * 1e8 elements is past the kernels' limit
        assertRefused(.usage, ["--mlp-hidden", "2147483647"]) { _ = try Trainer(options: o) }
        o.mlpHidden = 4
        o.zDim = Int.max / 3
        assertRefused(.usage, ["--z-dim"]) { _ = try Trainer(options: o) }
        // Epochs whose step count overflows are refused; a batch larger than the data is the data.
        o.zDim = 4
        o.batchSize = 16
        o.epochs = Int.max
        assertRefused(.usage, ["--epochs"]) { _ = try Trainer(options: o).run() }
        o.epochs = 2
        o.batchSize = Int.max
        let huge = try Trainer(options: o).run()
        o.batchSize = 40
        let whole = try Trainer(options: o).run()
        XCTAssertEqual(huge.steps, 2)
        XCTAssertEqual(huge.finalLoss, whole.finalLoss)
    }

    // MARK: - Base network

    func testBasesThatAreNotAChainOfLinearLayersAreRefused() throws {
        let (dir, _, data) = try makeProblem()
        let good = networkTensors()
        func variant(_ name: String, metadata: [String: String]? = ["format": "pt"],
                     _ edit: (inout [(TensorSpec, [UInt8])]) -> Void) throws -> String {
            var t = good
            edit(&t)
            let path = dir + "/\(name).safetensors"
            try writeBase(path, tensors: t, metadata: metadata)
            return path
        }
        func index(_ t: [(TensorSpec, [UInt8])], _ name: String) -> Int { t.firstIndex { $0.0.name == name }! }
        let bases: [(String, [String])] = [
            (try variant("no-layers") { t in t = [(TensorSpec(name: "embed", dtype: .f32, shape: [2]), [Float](repeating: 1, count: 2).bytes)] },
             ["no-layers.safetensors", "no <layer>.weight"]),
            (try variant("three-d") { t in t[index(t, "layers.1.weight")].0.shape = [7, 3, 3] },
             ["layers.1.weight", "[7, 3, 3]"]),
            (try variant("bias-length") { t in
                let i = index(t, "layers.1.bias")
                t[i] = (TensorSpec(name: "layers.1.bias", dtype: .f32, shape: [6]), [Float](repeating: 0, count: 6).bytes)
            }, ["layers.1.bias", "[6]", "expected [7]"]),
            (try variant("no-chain") { t in
                let i = index(t, "layers.1.weight")
                t[i] = (TensorSpec(name: "layers.1.weight", dtype: .f32, shape: [7, 8]), [Float](repeating: 0.1, count: 56).bytes)
            }, ["layers.1 takes 8 inputs", "layers.0 gives 9"]),
            (try variant("empty-layer") { t in
                t = [(TensorSpec(name: "layers.0.weight", dtype: .f32, shape: [0, 12]), [])]
            }, ["layers.0.weight", "[0, 12]"]),
            (try variant("int-weight") { t in
                let i = index(t, "layers.2.weight")
                t[i].0.dtype = .i32
            }, ["layers.2.weight", "I32"]),
            (try variant("nan-weight") { t in
                let i = index(t, "layers.0.weight")
                var w = [Float](repeating: 0.1, count: 108)
                w[13] = .nan
                t[i].1 = w.bytes
            }, ["layers.0.weight[1, 1]", "nan"]),
            (try variant("inf-bias") { t in
                let i = index(t, "layers.2.bias")
                t[i].1 = [1, 2, .infinity, 4, 5].bytes
            }, ["layers.2.bias[2]", "inf"]),
            (try variant("listed-twice", metadata: ["opconvert.layers": "layers.0,layers.1,layers.1,layers.2"]) { _ in },
             ["layers.1", "twice"]),
            (try variant("listed-empty", metadata: ["opconvert.layers": "layers.0, ,layers.1"]) { _ in },
             ["opconvert.layers", "empty name"]),
            (try variant("listed-missing", metadata: ["opconvert.layers": "layers.0,layers.9"]) { _ in },
             ["layers.9.weight"]),
        ]
        for (path, fragments) in bases {
            assertRefused(.dataError, [path] + fragments) { _ = try Trainer(options: TrainOptions(base: path, data: data)) }
        }
    }

    // MARK: - Dataset

    func testDatasetsThatDoNotFitTheBaseAreRefused() throws {
        let (dir, base, _) = try makeProblem()
        func dataset(_ name: String, _ tensors: [(TensorSpec, [UInt8])]) throws -> String {
            let path = dir + "/\(name).safetensors"
            try SafetensorsWriter.write(path: path, tensors: tensors, metadata: nil)
            return path
        }
        var nanInputs = dataTensors()
        var x = [Float](repeating: 0.5, count: 40 * 12)
        x[3 * 12 + 4] = .nan
        nanInputs[0].1 = x.bytes
        var infInputs = dataTensors()
        x[3 * 12 + 4] = -.infinity
        infInputs[0].1 = x.bytes
        var floatLabels = dataTensors()
        floatLabels[1] = (TensorSpec(name: "labels", dtype: .f32, shape: [40]), [Float](repeating: 1, count: 40).bytes)
        var intInputs = dataTensors()
        intInputs[0].0.dtype = .i32
        let cases: [(String, [String])] = [
            (try dataset("narrow", dataTensors(features: 10)), ["10 features", "first layer takes 12"]),
            (try dataset("labels-high", dataTensors(classes: 6)), ["label 5", "[0, 5)"]),
            (try dataset("labels-negative", { var t = dataTensors(); t[1].1 = [Int64](repeating: -1, count: 40).withUnsafeBytes { [UInt8]($0) }; return t }()),
             ["label -1"]),
            (try dataset("no-rows", dataTensors(rows: 0)), ["inputs", "[0, 12]", "no rows"]),
            (try dataset("nan", nanInputs), ["inputs[3, 4]", "nan"]),
            (try dataset("inf", infInputs), ["inputs[3, 4]", "-inf"]),
            (try dataset("float-labels", floatLabels), ["labels", "F32", "I64"]),
            (try dataset("int-inputs", intInputs), ["inputs", "I32", "float"]),
            (try dataset("no-labels", [dataTensors()[0]]), ["no tensor \"labels\""]),
            (try dataset("label-count", { var t = dataTensors(); t[1] = (TensorSpec(name: "labels", dtype: .i64, shape: [39]), [Int64](repeating: 0, count: 39).withUnsafeBytes { [UInt8]($0) }); return t }()),
             ["labels", "[39]", "expected [40]"]),
        ]
        for (path, fragments) in cases {
            assertRefused(.dataError, [path] + fragments) { _ = try Trainer(options: TrainOptions(base: base, data: path)) }
        }
    }

    // MARK: - Divergence

    func testDivergingRunStopsWithTheStepAndSavesNothing() throws {
        let (dir, base, data) = try makeProblem()
        for method in AdapterMethod.allCases {
            var o = TrainOptions(base: base, data: data)
            o.method = method
            o.lr = 1e3
            o.batchSize = 8
            o.epochs = 3
            o.output = dir + "/out-\(method.rawValue)"
            o.lossCSV = dir + "/loss-\(method.rawValue).csv"
            do {
                _ = try Trainer(options: o).run()
                XCTFail("\(method.rawValue): lr 1e3 trained without diverging")
            } catch let TrainError.diverged(step, loss, _) {
                XCTAssertGreaterThan(step, 0, "the first step has the reference loss")
                XCTAssertTrue(!loss.isFinite || loss > 1000 * log(5.0), "\(method.rawValue): loss \(loss)")
                let message = TrainError.diverged(step: step, loss: loss, limit: nil).description
                XCTAssertTrue(message.contains("step \(step)"), message)
                XCTAssertEqual(ExitStatus.of(TrainError.diverged(step: step, loss: loss, limit: nil)), .dataError)
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: o.output!), "\(method.rawValue): no checkpoint after divergence")
            XCTAssertFalse(FileManager.default.fileExists(atPath: o.lossCSV!))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["data.safetensors", "net.safetensors"],
                       "no temporary leftovers either")
    }

    func testGrowthFactorStopsAFiniteBlowUpUnlessTurnedOff() throws {
        let (dir, base, data) = try makeProblem()
        var o = TrainOptions(base: base, data: data)
        o.method = .lora
        o.lr = 1.0
        o.batchSize = 8
        o.epochs = 4
        o.output = dir + "/out"
        // With a low factor the first step that at least doubles the reference stops the run.
        o.maxLossGrowth = 2
        var stoppedAt: Int?
        do { _ = try Trainer(options: o).run() } catch let TrainError.diverged(step, loss, limit) {
            let limit = try XCTUnwrap(limit, "a finite blow-up names the limit")
            XCTAssertGreaterThan(loss, limit)
            let message = TrainError.diverged(step: step, loss: loss, limit: limit).description
            XCTAssertTrue(message.contains("--max-loss-growth") && message.contains("step \(step)"), message)
            stoppedAt = step
        }
        XCTAssertNotNil(stoppedAt, "lr 1 on this network more than doubles the loss")
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.output!))
        // inf leaves only the non-finite check: the same run completes and saves.
        o.maxLossGrowth = .infinity
        let summary = try Trainer(options: o).run()
        XCTAssertTrue(summary.finalLoss.isFinite)
        XCTAssertTrue(FileManager.default.fileExists(atPath: o.output! + "/adapter_model.safetensors"))
    }

    func testNonFiniteLossIsReportedAsSuch() throws {
        let (dir, base, data) = try makeProblem()
        var o = TrainOptions(base: base, data: data)
        o.method = .lora
        o.lr = 1e30
        o.maxLossGrowth = .infinity
        o.batchSize = 8
        o.output = dir + "/out"
        do {
            _ = try Trainer(options: o).run()
            XCTFail("lr 1e30 trained")
        } catch let TrainError.diverged(step, loss, limit) {
            XCTAssertNil(limit)
            XCTAssertFalse(loss.isFinite)
            XCTAssertEqual(step, 1)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.output!))
    }

    func testParametersBlownUpByTheLastUpdateAreNotSaved() throws {
        let (dir, base, data) = try makeProblem()
        var o = TrainOptions(base: base, data: data)
        o.method = .lora
        // One step: its loss is fine, then lr x weight decay = 1e60 (inf in f32) blows A up
        // (and turns B = 0 into NaN).
        o.batchSize = 40
        o.lr = 1e30
        o.weightDecay = 1e30
        o.output = dir + "/out"
        assertRefused(.dataError, ["layers.0.lora_A.weight", "not finite", "after step 0", "nothing was saved"]) { _ = try Trainer(options: o).run() }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.output!))
    }

    func testSweepStillRecordsDivergedRunsAsDiverged() throws {
        let (dir, base, data) = try makeProblem()
        var o = TrainOptions(base: base, data: data)
        o.batchSize = 8
        o.epochs = 2
        let result = try LRSweep.run(base: o, methods: [.lora], lrs: [1e-2, 1e3], outputDirectory: dir + "/sweep")
        XCTAssertEqual(result.points.count, 2)
        XCTAssertTrue(result.points[0].finalLoss.isFinite)
        XCTAssertEqual(result.points[1].finalLoss, .infinity)
    }

    // MARK: - Factorize

    func testFactorizeRefusesBadFlags() throws {
        let cases: [(ExitStatus, [String], (inout FactorizeOptions) -> Void)] = [
            (.usage, ["--random 0x5"], { $0.randomShape = (0, 5) }),
            (.usage, ["--random -2x5"], { $0.randomShape = (-2, 5) }),
            (.usage, ["--random 99999999x99999999", "limit"], { $0.randomShape = (99_999_999, 99_999_999) }),
            (.usage, ["--random", "limit"], { $0.randomShape = (Int.max, 3) }),
            (.usage, ["--rank 11", "at most 10"], { $0.randomShape = (10, 40); $0.rank = 11 }),
            (.usage, ["--rank"], { $0.rank = 0 }), (.usage, ["--rank"], { $0.rank = -1 }),
            (.usage, ["--steps"], { $0.steps = 0 }), (.usage, ["--steps"], { $0.steps = -5 }),
            (.usage, ["--steps", "10000000"], { $0.steps = Int.max }),
            (.usage, ["--warmup-steps"], { $0.warmupSteps = -1 }),
            (.usage, ["--mlp-hidden"], { $0.mlpHidden = 0 }), (.usage, ["--z-dim"], { $0.zDim = 0 }),
            (.usage, ["--lr"], { $0.lr = .nan }), (.usage, ["--lr"], { $0.lr = -1 }), (.usage, ["--op-lr"], { $0.opLR = .infinity }),
            (.usage, ["--methods", "no method"], { $0.methods = [] }), (.usage, ["--methods", "\"svd\""], { $0.methods = ["mf", "svd"] }),
            (.usage, ["--mlp-hidden"], { $0.mlpHidden = Int.max / 4 }),
        ]
        for (status, fragments, change) in cases {
            var o = FactorizeOptions()
            change(&o)
            assertRefused(status, fragments) { try o.validate() }
            assertRefused(status, fragments) { _ = try Factorizer.run(o) }
        }
        // Direct LAPACK helper: a negative rank or a wrong count is an error, not a trap.
        assertRefused(.usage, ["rank -1"]) { _ = try Factorizer.svdTail([1, 2, 3, 4], rows: 2, cols: 2, rank: -1) }
        assertRefused(.usage, ["3 values", "2x2"]) { _ = try Factorizer.svdTail([1, 2, 3], rows: 2, cols: 2, rank: 1) }
    }

    func testFactorizeRefusesUnusableTargets() throws {
        let dir = TestPaths.scratch(self)
        func target(_ name: String, _ spec: TensorSpec, _ values: [Float]) throws -> String {
            let path = dir + "/\(name).safetensors"
            let bytes = spec.dtype == .i32 ? values.map { Int32($0) }.withUnsafeBytes { [UInt8]($0) } : values.bytes
            try SafetensorsWriter.write(path: path, tensors: [(spec, bytes)], metadata: nil)
            return path
        }
        var nan = [Float](repeating: 1, count: 12)
        nan[7] = .nan
        let cases: [(String, String?, [String], ExitStatus)] = [
            (try target("vector", TensorSpec(name: "m", dtype: .f32, shape: [12]), [Float](repeating: 1, count: 12)), "m", ["m", "[12]", "matrix"], .dataError),
            (try target("empty", TensorSpec(name: "m", dtype: .f32, shape: [0, 4]), []), "m", ["m", "[0, 4]"], .dataError),
            (try target("nan", TensorSpec(name: "m", dtype: .f32, shape: [3, 4]), nan), nil, ["m[1, 3]", "nan"], .dataError),
            (try target("ints", TensorSpec(name: "m", dtype: .i32, shape: [3, 4]), [Float](repeating: 1, count: 12)), "m", ["m", "I32"], .dataError),
            (try target("small", TensorSpec(name: "m", dtype: .f32, shape: [3, 4]), [Float](repeating: 1, count: 12)), nil, ["--rank 8", "3x4", "at most 3"], .usage),
        ]
        for (path, tensor, fragments, status) in cases {
            var o = FactorizeOptions()
            o.target = path
            o.tensor = tensor
            o.steps = 5
            assertRefused(status, [path] + fragments) { _ = try Factorizer.run(o) }
        }
    }

    func testFactorizeStillReportsDivergedRunsInsteadOfFailing() throws {
        var o = FactorizeOptions()
        o.randomShape = (20, 15)
        o.rank = 3
        o.steps = 50
        o.lr = 10
        o.opLR = 1e-3
        let r = try Factorizer.run(o)
        XCTAssertEqual(r.runs.map(\.diverged), [true, false])
        XCTAssertEqual(r.runs[0].finalError, .infinity)
    }
}
