"""Block hashes: a SHA-256 chain over the full KV blocks of a token sequence.

``h_i = SHA-256(h_{i-1} || token ids of block i as little-endian int32)``, with ``h_{-1}`` the cache
fingerprint: SHA-256 over the model file's fingerprint, the block size, the KV storage type and the
layout version, everything that makes two blocks' bytes differ. Equal hashes mean equal prefixes
of equal blocks, in any process on any machine (never Python's ``hash``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from ..core import Model

LAYOUT_VERSION = 1  # bump when a block's bytes change meaning


def cache_fingerprint(model: Model) -> bytes:
    """The root of every chain for this model, block size and KV layout (32 bytes)."""
    h = hashlib.sha256()
    h.update(b"nlm_native kv blocks\0")
    h.update(bytes.fromhex(model.fingerprint))
    h.update(struct.pack("<II", model.block_tokens, LAYOUT_VERSION))
    h.update(model.kv_codec.encode() + b"\0")
    return h.digest()


def block_hashes(tokens: Sequence[int], block_tokens: int, root: bytes) -> list[bytes]:
    """The chain's hash after each full block of ``tokens`` (a partial last block has none)."""
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be positive, got {block_tokens}")
    n = len(tokens) // block_tokens
    ids = np.asarray(tokens[: n * block_tokens], dtype="<i4")
    out: list[bytes] = []
    prev = root
    for i in range(n):
        prev = hashlib.sha256(prev + ids[i * block_tokens:(i + 1) * block_tokens].tobytes()).digest()
        out.append(prev)
    return out
