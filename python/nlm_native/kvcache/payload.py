"""The stored form of one KV block (DESIGN §6): a fixed header, then the block's bytes, zstd-compressed
where that shrinks them.

Header (little-endian, 108 bytes)::

    magic "NLMKVBLK" | format u16 | codec u8 | compression u8 | n_layer u16 | n_kv_head u16 |
    head_dim u16 | block_tokens u16 | payload bytes u64 | raw bytes u64 | CRC32C(payload) u32 |
    cache fingerprint 32 B | block hash 32 B | CRC32C(all of the above) u32

Decoding checks every field against what the reader expects (the model's shape, its codec, its
cache fingerprint, the block hash asked for) and both checksums; anything else raises
:class:`BlockFormatError` and the block is never turned into KV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from ..core import Model, crc32c, kvcodec

MAGIC = b"NLMKVBLK"
FORMAT_VERSION = 1
CODECS = {"f32": 0, "f16": 1, "int8": 2, "int4": 3}  # the pool's storage types (Model.kv_codec)
_FIELDS = struct.Struct("<8sHBBHHHHQQI32s32s")
HEADER_BYTES = _FIELDS.size + 4
_NONE, _ZSTD = 0, 1
_ZSTD_LEVEL = 3


class BlockFormatError(ValueError):
    """A stored block that is not exactly what it claims to be (corrupt, truncated, or another model's)."""


@dataclass(frozen=True)
class BlockLayout:
    """What a block must match to be used: the model's KV shape, codec and cache fingerprint."""

    codec: str
    n_layer: int
    n_kv_head: int
    head_dim: int
    block_tokens: int
    fingerprint: bytes

    @classmethod
    def of(cls, model: Model, fingerprint: bytes) -> BlockLayout:
        hp = model.hparams
        return cls(model.kv_codec, int(hp["n_layer"]), int(hp["n_head_kv"]), int(hp["head_dim"]),
                   model.block_tokens, fingerprint)

    @property
    def raw_bytes(self) -> int:
        """Bytes of one block as the pool stores it (csrc/kv/codec.h for the int codecs)."""
        n, d = self.block_tokens, self.head_dim
        if self.codec in kvcodec.CODECS:
            per_head = kvcodec.encoded_bytes(n, d, self.codec, "k") + kvcodec.encoded_bytes(n, d, self.codec, "v")
        else:
            per_head = 2 * n * d * (2 if self.codec == "f16" else 4)
        return self.n_layer * self.n_kv_head * per_head


def encode(raw: bytes, layout: BlockLayout, block_hash: bytes) -> bytes:
    """The stored form of one block's raw KV bytes."""
    if len(raw) != layout.raw_bytes:
        raise ValueError(f"a block of this layout is {layout.raw_bytes} bytes, got {len(raw)}")
    if len(block_hash) != 32 or len(layout.fingerprint) != 32:
        raise ValueError("the block hash and the cache fingerprint are 32 bytes each")
    packed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)
    comp, payload = (_ZSTD, packed) if len(packed) < len(raw) else (_NONE, raw)
    fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, CODECS[layout.codec], comp, layout.n_layer, layout.n_kv_head,
                          layout.head_dim, layout.block_tokens, len(payload), len(raw), crc32c(payload),
                          layout.fingerprint, block_hash)
    return fields + struct.pack("<I", crc32c(fields)) + payload


def decode(blob: bytes, layout: BlockLayout, block_hash: bytes) -> bytes:
    """The raw KV bytes of a stored block, after checking all of it; :class:`BlockFormatError` otherwise."""
    if len(blob) < HEADER_BYTES:
        raise BlockFormatError(f"stored block is {len(blob)} bytes, shorter than its {HEADER_BYTES}-byte header")
    fields = blob[: _FIELDS.size]
    (header_crc,) = struct.unpack_from("<I", blob, _FIELDS.size)
    if crc32c(fields) != header_crc:
        raise BlockFormatError("stored block header fails its CRC32C")
    (magic, version, codec, comp, n_layer, n_kv_head, head_dim, bt, n_payload, n_raw, payload_crc, fingerprint,
     stored_hash) = _FIELDS.unpack(fields)
    if magic != MAGIC:
        raise BlockFormatError(f"not a stored KV block (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise BlockFormatError(f"stored block format {version}, this reader knows {FORMAT_VERSION}")
    if codec != CODECS.get(layout.codec):
        raise BlockFormatError(f"stored block codec {codec} is not this model's {layout.codec}")
    if (n_layer, n_kv_head, head_dim, bt) != (layout.n_layer, layout.n_kv_head, layout.head_dim, layout.block_tokens):
        raise BlockFormatError(f"stored block shape {(n_layer, n_kv_head, head_dim, bt)} is not this model's "
                               f"{(layout.n_layer, layout.n_kv_head, layout.head_dim, layout.block_tokens)}")
    if fingerprint != layout.fingerprint:
        raise BlockFormatError("stored block belongs to another model, block size or layout")
    if stored_hash != block_hash:
        raise BlockFormatError("stored block is not the block asked for (hash mismatch)")
    if n_raw != layout.raw_bytes:
        raise BlockFormatError(f"stored block holds {n_raw} bytes, a block is {layout.raw_bytes}")
    payload = blob[HEADER_BYTES:]
    if len(payload) != n_payload:
        raise BlockFormatError(f"stored block payload is {len(payload)} bytes, its header says {n_payload}")
    if crc32c(payload) != payload_crc:
        raise BlockFormatError("stored block payload fails its CRC32C")
    if comp == _NONE:
        raw = payload
    elif comp == _ZSTD:
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=n_raw)
        except zstandard.ZstdError as e:
            raise BlockFormatError(f"stored block payload does not decompress: {e}") from None
    else:
        raise BlockFormatError(f"stored block compression {comp} is unknown")
    if len(raw) != n_raw:
        raise BlockFormatError(f"stored block decompresses to {len(raw)} bytes, not {n_raw}")
    return bytes(raw)
