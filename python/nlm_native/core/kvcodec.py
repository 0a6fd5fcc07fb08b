"""The int8 / int4 KV codecs of the core (csrc/kv/codec.h), over stacks of blocks, for tests and benches.

Keys (``part="k"``) are grouped per channel over a block's rows, values (``part="v"``) per row in groups
of 32 channels; each group stores an f16 minimum and scale. ``tier`` picks a kernel tier ("generic",
"avx2", "avx512", ...; default the active one): every tier writes the same bytes.
"""

from __future__ import annotations

import numpy as np

from .. import _core

CODECS = ("int8", "int4")


def encode(x: np.ndarray, codec: str, part: str, tier: str = "") -> bytes:
    """The codec's bytes of ``x``: float32 ``(blocks, rows, head_dim)``, head_dim a multiple of 32."""
    return bytes(_core.kv_encode(np.ascontiguousarray(x, dtype=np.float32), codec, part, tier))


def encode_into(out: np.ndarray, x: np.ndarray, codec: str, part: str, tier: str = "") -> None:
    """:func:`encode` into ``out``, a uint8 array of the encoded size (no allocation: for benches)."""
    _core.kv_encode(np.ascontiguousarray(x, dtype=np.float32), codec, part, tier, out)


def decode(data: bytes | np.ndarray, blocks: int, rows: int, head_dim: int, codec: str, part: str, tier: str = "",
           out: np.ndarray | None = None) -> np.ndarray:
    """What :func:`encode` wrote, as float32 ``(blocks, rows, head_dim)`` (into ``out`` when given)."""
    return np.asarray(_core.kv_decode(data, blocks, rows, head_dim, codec, part, tier, out))


def encoded_bytes(rows: int, head_dim: int, codec: str, part: str) -> int:
    """Bytes of one block of ``rows`` x ``head_dim`` in the codec."""
    bits = 8 if codec == "int8" else 4
    codes = rows * head_dim * bits // 8
    return 4 * head_dim + codes if part == "k" else 4 * rows * (head_dim // 32) + codes
