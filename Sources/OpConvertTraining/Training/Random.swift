import OpConvertCore
import OpConvertTensors
import OpConvertAdapters

/// A small deterministic generator (SplitMix64) so runs with the same --seed repeat
/// exactly on every machine.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits, exactly representable in f32.
    public mutating func unitFloat() -> Float { Float(next() >> 40) / Float(1 << 24) }

    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * unitFloat() }

    /// Standard normal (Box-Muller).
    public mutating func normal() -> Float {
        let u1 = max(Double(next() >> 11) / Double(1 << 53), 1e-300)
        let u2 = Double(next() >> 11) / Double(1 << 53)
        return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }

    /// PyTorch's nn.Linear / PEFT default: kaiming_uniform_(a=sqrt(5)), bound 1/sqrt(fan_in).
    public mutating func kaimingUniform(count: Int, fanIn: Int) -> [Float] {
        let bound = 1 / Float(fanIn).squareRoot()
        return (0..<count).map { _ in uniform(-bound, bound) }
    }

    public mutating func shuffle(_ n: Int) -> [Int] {
        var idx = Array(0..<n)
        if n > 1 {
            for i in stride(from: n - 1, to: 0, by: -1) {
                let j = Int(next() % UInt64(i + 1))
                idx.swapAt(i, j)
            }
        }
        return idx
    }
}

import Foundation
