"""Counter-based randomness: every random number is a pure function of (seed, vehicle id, tick, stream, index).

No generator state is carried, so a vehicle draws the same numbers whether it runs alone, in a batch of
100,000 or in one of four shards, and CPU and CUDA draw bit-identical integers (only the float transforms
that follow may differ by rounding). The hash is a 32-bit avalanche mix (xor-shift / multiply rounds; the
multipliers are below 2**31, so a 32-bit value times one stays below 2**63 and int64 never overflows) evaluated
in place on int64 tensors.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "STREAM_CAMERA",
    "STREAM_GHOST",
    "STREAM_LIDAR",
    "STREAM_RADAR",
    "STREAM_SCENARIO",
    "hash32",
    "noise",
    "uniform",
    "vehicle_key",
]

MASK32 = 0xFFFFFFFF
_M1 = 0x21F0AAAD
_M2 = 0x735A2D97
_GOLDEN = 0x9E3779B9

# Streams keep unrelated draws independent: a new sensor never shifts the numbers of another.
STREAM_SCENARIO = 1
STREAM_CAMERA = 2
STREAM_LIDAR = 3
STREAM_RADAR = 4
STREAM_GHOST = 5


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche-mix a tensor of 32-bit values (int64 dtype) into 32-bit values; returns a new tensor."""
    x = x & MASK32
    x ^= x >> 16
    x.mul_(_M1).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(_M2).bitwise_and_(MASK32)
    x ^= x >> 15
    return x


def vehicle_key(seed: int, vehicle_ids: torch.Tensor, tick: int | torch.Tensor, stream: int) -> torch.Tensor:
    """Per-vehicle key [B] (int64, 32-bit values) for one tick and stream; the base of every draw.

    ``vehicle_ids`` are int64 ids (any value below 2**62); ``tick`` an int or an int64 tensor broadcastable to it.
    """
    vid = vehicle_ids.to(torch.int64)
    k = hash32(torch.full_like(vid, (seed ^ (stream * _GOLDEN)) & MASK32))
    k = hash32(k ^ (vid & MASK32))
    k = hash32(k ^ ((vid >> 32) & MASK32) ^ _GOLDEN)
    t = torch.as_tensor(tick, dtype=torch.int64, device=vid.device)
    return hash32(k ^ (t & MASK32))


def _bits(key: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] 32-bit values, one per (vehicle key, index)."""
    idx = torch.arange(n, dtype=torch.int64, device=key.device)
    return hash32(key.unsqueeze(-1) ^ hash32(idx * _GOLDEN + 1))


def uniform(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform floats in [0, 1) of shape [B, *shape] (float32, 24-bit resolution) from per-vehicle keys [B]."""
    n = math.prod(shape)
    u = (_bits(key, n) >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return u.reshape(*key.shape, *shape)


def noise(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-mean, unit-variance noise of shape [B, *shape] (float32): triangular, the sum of the two 16-bit
    halves of one hash, bounded at +-sqrt(6). Cheaper than a Gaussian by several times on the CPU, and sensor
    noise only needs its first two moments and bounded tails."""
    n = math.prod(shape)
    b = _bits(key, n)
    total = (b & 0xFFFF) + (b >> 16)  # 0 .. 2 * 65535, mean 65535
    z = (total.to(torch.float32) - 65535.0) * (math.sqrt(6.0) / 65536.0)
    return z.reshape(*key.shape, *shape)
