"""Random, well-formed blocks of every supported weight format, for kernel tests."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import GGML_QUANT_SIZES

# Byte offsets of the f16 scale fields inside one block of each format.
F16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q8_0: (0,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}

ALL_TYPES: tuple[QT, ...] = (
    QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K,
)


def finite_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite float16 values over the whole range: normals of many magnitudes, subnormals, zeros."""
    mag = np.exp2(rng.uniform(-26, 15, size=n)) * rng.choice([-1.0, 1.0], size=n)
    h = mag.astype(np.float16)
    h[rng.random(n) < 0.02] = 0.0
    return np.where(np.isfinite(h), h, np.float16(1.0)).astype(np.float16)


def random_rows(qtype: QT, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """(n_rows, row_bytes) uint8: random quants, finite scales."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    assert n_cols % block == 0
    n_blocks = n_rows * n_cols // block
    if qtype == QT.F32:
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32).view(np.uint8)
    if qtype == QT.F16:
        return finite_halves(rng, n_rows * n_cols).reshape(n_rows, n_cols).view(np.uint8)
    if qtype == QT.BF16:
        # Any bit pattern of sign and mantissa, exponents over +-2^40 (finite, products stay finite).
        mag = np.exp2(rng.uniform(-40, 40, size=(n_rows, n_cols))) * rng.choice([-1.0, 1.0], size=(n_rows, n_cols))
        bits = (mag.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = finite_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)
