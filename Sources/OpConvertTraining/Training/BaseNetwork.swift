import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

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
        if let empty = weights.firstIndex(where: \.isEmpty) {
            throw TrainError.invalidBase(path: path, reason: "metadata opconvert.layers has an empty name at position \(empty + 1)")
        }
        if let twice = weights.enumerated().first(where: { weights[..<$0.offset].contains($0.element) })?.element {
            throw TrainError.invalidBase(path: path, reason: "layer \(twice) is listed twice in metadata opconvert.layers")
        }
        var layers: [Layer] = []
        for name in weights {
            guard let w = store.entry(named: name + ".weight") else {
                throw TrainError.invalidBase(path: path, reason: "layer \(name) has no tensor \(name).weight")
            }
            guard w.info.shape.count == 2 else {
                throw TrainError.invalidBase(path: path, reason: "\(name).weight has shape \(w.info.shape); only Linear [out, in] layers are supported")
            }
            let out = w.info.shape[0], inF = w.info.shape[1]
            guard out > 0, inF > 0 else { throw TrainError.invalidBase(path: path, reason: "\(name).weight has shape \(w.info.shape); a layer needs at least one input and one output") }
            let weight = try finiteFloats(store, w) { TrainError.invalidBase(path: path, reason: $0) }
            var bias = [Float](repeating: 0, count: out)
            if let b = store.entry(named: name + ".bias") {
                guard b.info.shape == [out] else { throw TrainError.invalidBase(path: path, reason: "\(name).bias has shape \(b.info.shape), expected [\(out)]") }
                bias = try finiteFloats(store, b) { TrainError.invalidBase(path: path, reason: $0) }
            }
            if let prev = layers.last, prev.outFeatures != inF {
                throw TrainError.invalidBase(path: path, reason: "layer \(name) takes \(inF) inputs but \(prev.name) gives \(prev.outFeatures)")
            }
            layers.append(Layer(name: name, outFeatures: out, inFeatures: inF, weight: weight, bias: bias))
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
        guard n > 0, x.info.shape[1] > 0 else { throw TrainError.invalidData(path: path, reason: "inputs has shape \(x.info.shape): no rows or no features to train on") }
        guard y.info.shape == [n] else { throw TrainError.invalidData(path: path, reason: "labels has shape \(y.info.shape), expected [\(n)]") }
        let raw = store.data(y)
        let labels: [Int64]
        switch y.info.dtype {
        case .i64: labels = (0..<n).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self).littleEndian }
        case .i32: labels = (0..<n).map { Int64(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self).littleEndian) }
        default: throw TrainError.invalidData(path: path, reason: "labels has dtype \(y.info.dtype.rawValue), expected I64 (or I32)")
        }
        let inputs = try finiteFloats(store, x) { TrainError.invalidData(path: path, reason: $0) }
        return Dataset(inputs: inputs, labels: labels, count: n, features: x.info.shape[1])
    }
}

/// A float tensor's values; other dtypes and NaN/Inf values are refused through `refuse`,
/// naming the tensor (and the first bad element's position).
func finiteFloats(_ store: TensorStore, _ entry: TensorStore.Entry, refuse: (String) -> TrainError) throws -> [Float] {
    let info = entry.info
    guard info.dtype.isDecodableFloat else { throw refuse("\(info.name) has dtype \(info.dtype.rawValue), expected a float type (F32)") }
    let values = try TensorData.stored(store, entry).floats()
    if let i = values.firstIndex(where: { !$0.isFinite }) {
        let at = info.shape.count == 2 ? "[\(i / info.shape[1]), \(i % info.shape[1])]" : "[\(i)]"
        throw refuse("\(info.name)\(at) is \(values[i]); training needs finite values")
    }
    return values
}

import Foundation
