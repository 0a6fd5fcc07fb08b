"""A KV block out of the pool, into its stored form and back: exact, and never from a bad blob."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from nlm_native import Batch, KVCacheFull, Model
from nlm_native.kvcache import BlockFormatError, BlockLayout, block_hashes, cache_fingerprint, decode, encode
from nlm_native.kvcache.payload import HEADER_BYTES

BT = 8


def prefill(model: Model, ids: list[int]) -> int:
    seq = model.new_sequence()
    b = Batch()
    b.add_sequence(ids, 0, seq, logits="none")
    model.forward(b)
    return seq


@pytest.fixture(params=["f16", "f32", "int8", "int4"])
def model(request: pytest.FixtureRequest, tiny_chat32_path: Path) -> Model:
    return Model.load(tiny_chat32_path, n_ctx=256, block_tokens=BT, kv_codec=request.param, n_threads=1)


def test_blocks_exported_and_appended_restore_the_cache_exactly(model: Model) -> None:
    ids = list(range(3, 3 + 3 * BT + 5))
    src = prefill(model, ids)
    raws = [model.export_block(src, i) for i in range(3)]
    assert all(len(r) == model.memory()["kv_block_bytes"] for r in raws)
    with pytest.raises(ValueError, match="full blocks"):
        model.export_block(src, 3)  # the partial block
    dst = model.new_sequence()
    for r in raws:
        model.append_block(dst, r)
    assert model.sequence_length(dst) == 3 * BT
    for layer in (0, int(model.hparams["n_layer"]) - 1):
        for t in (0, 7, 23):
            for values in (False, True):
                np.testing.assert_array_equal(model.read_kv(dst, layer, t, values=values),
                                              model.read_kv(src, layer, t, values=values))
    # the next tokens' logits from the restored cache equal those of the computed one
    rest = ids[3 * BT:]
    outs = []
    for seq in (src, dst):
        model.truncate(seq, 3 * BT)
        b = Batch()
        b.add_sequence(rest, 3 * BT, seq, logits="all")
        outs.append(model.forward(b))
    np.testing.assert_array_equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="whole number of blocks"):
        model.append_block(dst, raws[0])
    with pytest.raises(ValueError, match="bytes here"):
        model.append_block(model.new_sequence(), raws[0][:-1])
    for s in model.sequences():
        model.free(s)


def test_append_block_on_a_full_pool_raises_and_changes_nothing(tiny_chat_path: Path) -> None:
    m = Model.load(tiny_chat_path, n_ctx=64, kv_blocks=2, block_tokens=BT, n_threads=1)
    src = prefill(m, list(range(3, 3 + 2 * BT)))
    raw = m.export_block(src, 0)
    dst = m.new_sequence()
    with pytest.raises(KVCacheFull):
        m.append_block(dst, raw)
    assert m.sequence_length(dst) == 0


def test_a_stored_block_round_trips_and_any_damage_is_refused(model: Model) -> None:
    ids = list(range(5, 5 + BT))
    seq = prefill(model, ids)
    raw = model.export_block(seq, 0)
    fp = cache_fingerprint(model)
    layout = BlockLayout.of(model, fp)
    (h,) = block_hashes(ids, BT, fp)
    blob = encode(raw, layout, h)
    assert decode(blob, layout, h) == raw
    # every single flipped byte (header or payload) is refused
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x40
        with pytest.raises(BlockFormatError):
            decode(bytes(bad), layout, h)
    # every truncation, and anything appended
    for n in range(len(blob)):
        with pytest.raises(BlockFormatError):
            decode(blob[:n], layout, h)
    with pytest.raises(BlockFormatError):
        decode(blob + b"\0", layout, h)
    # a header field changed with its CRC recomputed is still refused (checked against the reader)
    for off, fmt, value in ((8, "<H", 2), (10, "<B", 9), (12, "<H", 99), (18, "<H", 16)):
        bad = bytearray(blob)
        struct.pack_into(fmt, bad, off, value)
        from nlm_native import crc32c
        struct.pack_into("<I", bad, HEADER_BYTES - 4, crc32c(bytes(bad[: HEADER_BYTES - 4])))
        with pytest.raises(BlockFormatError):
            decode(bytes(bad), layout, h)
    # another block's hash, another model's fingerprint
    with pytest.raises(BlockFormatError, match="hash"):
        decode(blob, layout, hashlib.sha256(b"x").digest())
    other = BlockLayout(layout.codec, layout.n_layer, layout.n_kv_head, layout.head_dim, layout.block_tokens,
                        hashlib.sha256(b"another model").digest())
    with pytest.raises(BlockFormatError, match="another model"):
        decode(blob, other, h)
    model.free(seq)
