/// PyTorch's CPU random generator (`torch.Generator(device="cpu")`, CPUGeneratorImpl), far
/// enough to regenerate tensors that PEFT derives from a seed (VeRA's projections): the
/// mt19937 engine as torch seeds it, `uniform_` on float32 tensors, and PEFT's Kaiming
/// uniform initialisation. Bit-exact against torch (tests: fixtures/vera/rng).
public struct TorchGenerator: Sendable {
    private static let stateSize = 624
    private var state: [UInt32]
    private var index: Int

    /// `manual_seed(seed)`: torch's mt19937 keeps only the low 32 bits of the seed and
    /// fills its state with the standard mt19937 initialisation.
    public init(seed: UInt64) {
        var s = [UInt32](repeating: 0, count: Self.stateSize)
        s[0] = UInt32(truncatingIfNeeded: seed)
        for j in 1..<Self.stateSize {
            s[j] = 1_812_433_253 &* (s[j - 1] ^ (s[j - 1] >> 30)) &+ UInt32(j)
        }
        state = s
        index = Self.stateSize
    }

    /// One 32-bit output of the engine (`generator->random()`).
    public mutating func nextUInt32() -> UInt32 {
        if index >= Self.stateSize { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        let n = Self.stateSize, m = 397
        for k in 0..<n {
            let y = (state[k] & 0x8000_0000) | (state[(k + 1) % n] & 0x7FFF_FFFF)
            state[k] = state[(k + m) % n] ^ (y >> 1) ^ ((y & 1) == 0 ? 0 : 0x9908_B0DF)
        }
        index = 0
    }

    /// `torch.empty(count).uniform_(from, to, generator=g)` for float32, element by element
    /// in storage order. torch casts the bounds to float, draws one 32-bit word per value,
    /// keeps its low 24 bits (float's digits) as x = k / 2^24 and returns x·(to - from) + from
    /// in float, contracted to one fused multiply-add by the compiler. Here the product and
    /// sum are formed in double, where both are exact (24 × 24 bits, then at most 48 bits
    /// spanning from's exponent), so the single rounding to float gives the fused result.
    public mutating func uniformFloat32(count: Int, from: Double, to: Double) -> [Float] {
        let lo = Float(from), hi = Float(to)
        let width = Double(hi - lo), start = Double(lo)
        let divisor = 1.0 / Double(1 << 24)
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let x = Double(nextUInt32() & 0x00FF_FFFF) * divisor
            out[i] = Float(x * width + start)
        }
        return out
    }

    /// PEFT's `_kaiming_init((rows, columns), generator)` (peft/tuners/vera/model.py): a
    /// float32 (rows, columns) tensor, uniform in ±bound with fan_in = columns and
    /// bound = sqrt(3) · (sqrt(2) / sqrt(fan_in)), computed in double as Python does.
    public mutating func kaimingUniformFloat32(rows: Int, columns: Int) -> [Float] {
        let bound = Double(3).squareRoot() * (Double(2).squareRoot() / Double(columns).squareRoot())
        return uniformFloat32(count: rows * columns, from: -bound, to: bound)
    }
}
