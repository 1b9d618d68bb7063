"""Counter-based randomness: every random number is a pure function of (seed, vehicle id, tick, stream, index).

No generator state is carried, so a vehicle draws the same numbers whether it runs alone, in a batch of
100,000 or in one of four shards, and CPU and CUDA draw bit-identical integers (only the float transforms
that follow may differ by rounding). The hash is a 32-bit avalanche mix (xor-shift / multiply rounds,
constants from the "lowbias32" family) evaluated on int64 tensors; the 32 x 32-bit products are split into
16-bit halves so that nothing ever overflows int64.
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
    "normal",
    "uniform",
    "vehicle_key",
]

MASK32 = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9

# Streams keep unrelated draws independent: a new sensor never shifts the numbers of another.
STREAM_SCENARIO = 1
STREAM_CAMERA = 2
STREAM_LIDAR = 3
STREAM_RADAR = 4
STREAM_GHOST = 5


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + ((hi * (c & 0xFFFF)) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche-mix a tensor of 32-bit values (int64 dtype, 0 <= x < 2**32) into 32-bit values."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


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


def normal(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal floats of shape [B, *shape] (float32; Box-Muller on two 16-bit halves of one hash).

    The 16-bit halves bound the tails at about 4.7 sigma, which is fine for sensor noise.
    """
    n = math.prod(shape)
    b = _bits(key, n)
    u1 = ((b >> 16).to(torch.float32) + 0.5) * (1.0 / 65536.0)
    u2 = (b & 0xFFFF).to(torch.float32) * (1.0 / 65536.0)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.reshape(*key.shape, *shape)
