"""A NumPy model of the int8 / int4 KV codecs, written from the format's description in csrc/kv/codec.h.

It shares no code with the core: numpy's float16 rounding and ``nextafter`` give the f16 bounds, and the
encoder's operations are the documented ones, each rounded to float32 as the kernels round them.
"""

from __future__ import annotations

import numpy as np

GROUP = 32
F16_MAX = np.float16(65504.0)


def _f16_down(x: np.ndarray) -> np.ndarray:
    """The largest finite float16 <= x (float32 input), elementwise."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    h = np.where(h.astype(np.float32) > x, np.nextafter(h, np.float16(-np.inf)), h)
    return np.clip(h, -F16_MAX, F16_MAX).astype(np.float16)


def _f16_up(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    h = np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)
    return np.clip(h, -F16_MAX, F16_MAX).astype(np.float16)


def params(lo: np.ndarray, hi: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale f16, min f16, encoder multiplier f32) of groups with these extremes."""
    lo = (lo.astype(np.float32) + np.float32(0)).astype(np.float32)
    hi = (hi.astype(np.float32) + np.float32(0)).astype(np.float32)
    mn16 = _f16_down(lo)
    sc16 = _f16_up(((hi - mn16.astype(np.float32)) / np.float32(qmax)).astype(np.float32))
    sc = sc16.astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(sc > 0, np.float32(1) / np.where(sc > 0, sc, 1), 0).astype(np.float32)
    return sc16, mn16, inv


def _codes(x: np.ndarray, mn: np.ndarray, inv: np.ndarray, qmax: int) -> np.ndarray:
    v = ((x - mn).astype(np.float32) * inv).astype(np.float32)
    v = np.minimum(np.maximum(v, np.float32(0)), np.float32(qmax))
    return np.rint(v).astype(np.uint8)  # rint: round half to even


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Rows of codes -> bytes: int8 as is; int4 per 32 channels, byte i = c[i] | c[i + 16] << 4."""
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    n, d = codes.shape
    c = codes.reshape(n, d // GROUP, 2, 16)
    return (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).astype(np.uint8).tobytes()


def _unpack(data: bytes, n: int, d: int, bits: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return b.reshape(n, d)
    b = b.reshape(n, d // GROUP, 16)
    return np.stack([b & 0x0F, b >> 4], axis=2).reshape(n, d)


def encode(x: np.ndarray, codec: str, part: str) -> bytes:
    """One block ``x`` (rows, head_dim) float32 in the codec."""
    bits = 8 if codec == "int8" else 4
    qmax = (1 << bits) - 1
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    if part == "k":  # per channel over the rows
        sc16, mn16, inv = params(x.min(axis=0), x.max(axis=0), qmax)
        codes = _codes(x, mn16.astype(np.float32)[None, :], inv[None, :], qmax)
        return sc16.tobytes() + mn16.tobytes() + _pack(codes, bits)
    g = x.reshape(n, d // GROUP, GROUP)  # per row, groups of 32 channels
    sc16, mn16, inv = params(g.min(axis=2), g.max(axis=2), qmax)
    codes = _codes(g, mn16.astype(np.float32)[:, :, None], inv[:, :, None], qmax).reshape(n, d)
    return sc16.tobytes() + mn16.tobytes() + _pack(codes, bits)


def decode(data: bytes, n: int, d: int, codec: str, part: str) -> np.ndarray:
    bits = 8 if codec == "int8" else 4
    ng = d if part == "k" else n * (d // GROUP)
    sc = np.frombuffer(data[:2 * ng], dtype=np.float16).astype(np.float32)
    mn = np.frombuffer(data[2 * ng:4 * ng], dtype=np.float16).astype(np.float32)
    codes = _unpack(data[4 * ng:], n, d, bits).astype(np.float32)
    if part == "k":
        return (codes * sc[None, :]).astype(np.float32) + mn[None, :]
    g = codes.reshape(n, d // GROUP, GROUP)
    return ((g * sc.reshape(n, -1, 1)).astype(np.float32) + mn.reshape(n, -1, 1)).reshape(n, d)


def scales(data: bytes, n: int, d: int, part: str) -> np.ndarray:
    """Each element's group scale, (n, d)."""
    if part == "k":
        return np.broadcast_to(np.frombuffer(data[:2 * d], dtype=np.float16).astype(np.float32), (n, d))
    ng = n * (d // GROUP)
    sc = np.frombuffer(data[:2 * ng], dtype=np.float16).astype(np.float32).reshape(n, -1)
    return np.repeat(sc, GROUP, axis=1)
