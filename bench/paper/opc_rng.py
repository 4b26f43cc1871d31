"""A Python replica of opconvert's SeededRandom (SplitMix64, Sources/OpConvertTraining/Training/
Random.swift) and of the initialisation order of `train` and `train factorize`, so that the
reference implementations here start from bit-identical parameters and see the same batches.
"""
import math

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


class SeededRandom:
    def __init__(self, seed: int):
        self.state = (seed + GOLDEN) & M64

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def unit_floats(self, n: int) -> np.ndarray:
        return np.array([self.next() >> 40 for _ in range(n)], dtype=np.float32) / np.float32(1 << 24)

    def uniform(self, n: int, lo, hi) -> np.ndarray:
        lo, hi = np.float32(lo), np.float32(hi)
        return (lo + (hi - lo) * self.unit_floats(n)).astype(np.float32)

    def normal(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            u1 = max((self.next() >> 11) / float(1 << 53), 1e-300)
            u2 = (self.next() >> 11) / float(1 << 53)
            out[i] = np.float32(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
        return out

    def kaiming_uniform(self, n: int, fan_in: int) -> np.ndarray:
        bound = np.float32(1) / np.sqrt(np.float32(fan_in))
        return self.uniform(n, -bound, bound)

    def shuffle(self, n: int) -> list:
        idx = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.next() % (i + 1)
            idx[i], idx[j] = idx[j], idx[i]
        return idx


def hyper_mlp_init(rng: SeededRandom, z_dim: int, hidden: int, outputs: int, zero_from: int, zero_to: int):
    """HyperMLP.init: W2 (drawn first, rows [zero_from, zero_to) zeroed), z ~ N(0,1), W1; biases 0."""
    w2 = rng.kaiming_uniform(outputs * hidden, hidden).reshape(outputs, hidden)
    w2[zero_from:zero_to] = 0
    z = rng.normal(z_dim)
    w1 = rng.kaiming_uniform(hidden * z_dim, z_dim).reshape(hidden, z_dim)
    return {"z": z, "w1": w1, "c1": np.zeros(hidden, np.float32), "w2": w2, "c2": np.zeros(outputs, np.float32)}


def schedule_factor(kind: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
