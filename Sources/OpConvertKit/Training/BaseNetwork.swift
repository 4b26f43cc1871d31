/// The frozen network `train` adapts: Linear layers with ReLU between them, stored in
/// safetensors as `<layer>.weight` [out, in] and optional `<layer>.bias` [out]. Layer order:
/// the metadata key `opconvert.layers` (comma-separated) when present, else names in
/// natural order (layers.2 before layers.10).
public struct BaseNetwork: Sendable {
    public struct Layer: Sendable {
        public var name: String
        public var outFeatures: Int
        public var inFeatures: Int
        public var weight: [Float]
        public var bias: [Float]
    }
    public var path: String
    public var layers: [Layer]

    public static func load(_ path: String) throws -> BaseNetwork {
        let store = try TensorStore.open(path)
        var weights: [String] = store.entries.map(\.info.name).filter { $0.hasSuffix(".weight") }.map { String($0.dropLast(7)) }
        if let listed = store.metadata?["opconvert.layers"] {
            weights = listed.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
        } else {
            weights.sort { naturalLess($0, $1) }
        }
        guard !weights.isEmpty else { throw TrainError.invalidBase(path: path, reason: "no <layer>.weight tensors") }
        var layers: [Layer] = []
        for name in weights {
            guard let w = store.entry(named: name + ".weight") else {
                throw TrainError.invalidBase(path: path, reason: "layer \(name) has no tensor \(name).weight")
            }
            guard w.info.shape.count == 2 else {
                throw TrainError.invalidBase(path: path, reason: "\(name).weight has shape \(w.info.shape); only Linear [out, in] layers are supported")
            }
            let out = w.info.shape[0], inF = w.info.shape[1]
            var bias = [Float](repeating: 0, count: out)
            if let b = store.entry(named: name + ".bias") {
                guard b.info.shape == [out] else { throw TrainError.invalidBase(path: path, reason: "\(name).bias has shape \(b.info.shape), expected [\(out)]") }
                bias = try TensorData.stored(store, b).floats()
            }
            if let prev = layers.last, prev.outFeatures != inF {
                throw TrainError.invalidBase(path: path, reason: "layer \(name) takes \(inF) inputs but \(prev.name) gives \(prev.outFeatures)")
            }
            layers.append(Layer(name: name, outFeatures: out, inFeatures: inF, weight: try TensorData.stored(store, w).floats(), bias: bias))
        }
        return BaseNetwork(path: path, layers: layers)
    }

    static func naturalLess(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: [.numeric]) == .orderedAscending
    }
}

/// `inputs` f32 [N, D] and `labels` i64 [N] in one safetensors file.
public struct Dataset: Sendable {
    public var inputs: [Float]
    public var labels: [Int64]
    public var count: Int
    public var features: Int

    public static func load(_ path: String) throws -> Dataset {
        let store = try TensorStore.open(path)
        guard let x = store.entry(named: "inputs") else { throw TrainError.invalidData(path: path, reason: "no tensor \"inputs\" [N, D]") }
        guard let y = store.entry(named: "labels") else { throw TrainError.invalidData(path: path, reason: "no tensor \"labels\" [N]") }
        guard x.info.shape.count == 2 else { throw TrainError.invalidData(path: path, reason: "inputs has shape \(x.info.shape), expected [N, D]") }
        let n = x.info.shape[0]
        guard y.info.shape == [n] else { throw TrainError.invalidData(path: path, reason: "labels has shape \(y.info.shape), expected [\(n)]") }
        let raw = store.data(y)
        let labels: [Int64]
        switch y.info.dtype {
        case .i64: labels = (0..<n).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self).littleEndian }
        case .i32: labels = (0..<n).map { Int64(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self).littleEndian) }
        default: throw TrainError.invalidData(path: path, reason: "labels has dtype \(y.info.dtype.rawValue), expected I64")
        }
        return Dataset(inputs: try TensorData.stored(store, x).floats(), labels: labels, count: n, features: x.info.shape[1])
    }
}

import Foundation
