"""The KV pool in the int8 / int4 codecs: what it stores (checked against a NumPy model of the codec),
the f16 window of a sequence's open block, chunking, forks, truncation, tiers and memory."""

from __future__ import annotations

from pathlib import Path

import kv_codec_ref as ref
import numpy as np
import pytest

from nlm_native import Batch, Model
from nlm_native._core import kernels

BT = 8
CODECS = ["int8", "int4"]
TIERS = [t for t in kernels.tiers() if t != "ref"]
rng = np.random.default_rng(31)
PROMPT = [int(t) for t in rng.integers(3, 300, size=3 * BT + 5)]


def load(path: Path, codec: str, **kw: object) -> Model:
    args: dict = {"n_threads": 2, "n_ctx": 128, "block_tokens": BT, "kv_codec": codec} | kw
    return Model.load(path, **args)


def prefill(m: Model, ids: list[int], chunks: list[int] | None = None, start: int = 0, seq: int | None = None
            ) -> tuple[int, np.ndarray]:
    """Feeds ids in chunks of the given sizes (one batch by default); the logits of every entry."""
    seq = m.new_sequence() if seq is None else seq
    out, pos = [], start
    for size in chunks or [len(ids)]:
        b = Batch()
        b.add_sequence(ids[pos - start:pos - start + size], pos, seq, logits="all")
        out.append(m.forward(b))
        pos += size
    return seq, np.concatenate(out)


def kv_rows(m: Model, seq: int, layer: int, tokens: range, values: bool) -> np.ndarray:
    """(tokens, n_kv_head, head_dim) as the pool returns them."""
    return np.stack([m.read_kv(seq, layer, t, values=values) for t in tokens])


@pytest.mark.parametrize("codec", CODECS)
def test_full_blocks_hold_the_codec_of_the_f16_rows(tiny_chat32_path: Path, codec: str) -> None:
    """Layer 0 sees the same inputs in both pools: every full block of the codec pool decodes to
    ref.decode(ref.encode(its f16 rows)); the open block holds the f16 rows themselves."""
    f16, q = load(tiny_chat32_path, "f16"), load(tiny_chat32_path, codec)
    s16, _ = prefill(f16, PROMPT)
    sq, _ = prefill(q, PROMPT)
    n_full = len(PROMPT) // BT
    for values in (False, True):
        rows16 = kv_rows(f16, s16, 0, range(len(PROMPT)), values)
        rowsq = kv_rows(q, sq, 0, range(len(PROMPT)), values)
        for b in range(n_full):
            for g in range(rows16.shape[1]):
                x = rows16[b * BT:(b + 1) * BT, g]
                part = "v" if values else "k"
                want = ref.decode(ref.encode(x, codec, part), BT, x.shape[1], codec, part)
                np.testing.assert_array_equal(rowsq[b * BT:(b + 1) * BT, g], want)
        np.testing.assert_array_equal(rowsq[n_full * BT:], rows16[n_full * BT:])  # the open block: f16
    # what a full block exports is those bytes: per layer, per head, keys then values
    raw = q.export_block(sq, 0)
    x = kv_rows(f16, s16, 0, range(BT), False)[:, 0]
    assert raw.startswith(ref.encode(x, codec, "k"))


@pytest.mark.parametrize("codec", CODECS)
def test_chunks_equal_one_batch(tiny_chat32_path: Path, codec: str) -> None:
    """Appending KV in chunks equals one append: the same stored bytes and the same logits, because an
    entry reads its own block at f16 and every earlier block in the codec, however the prompt is split."""
    m = load(tiny_chat32_path, codec)
    whole, lw = prefill(m, PROMPT)
    for chunks in ([1] * len(PROMPT), [3, 5, 9, 12], [BT, BT, BT, 5], [BT - 1, 2, len(PROMPT) - BT - 1]):
        seq, lc = prefill(m, PROMPT, chunks)
        np.testing.assert_array_equal(lc, lw, err_msg=str(chunks))
        for i in range(len(PROMPT) // BT):
            assert m.export_block(seq, i) == m.export_block(whole, i)
        m.free(seq)


def test_codec_changes_logits_a_little(tiny_chat32_path: Path) -> None:
    a = prefill(load(tiny_chat32_path, "f16"), PROMPT)[1]
    err = {}
    for codec in CODECS:
        b = prefill(load(tiny_chat32_path, codec), PROMPT)[1]
        np.testing.assert_array_equal(b[:BT], a[:BT])  # the first block attends only to its own f16 rows
        err[codec] = float(np.abs(b[BT:] - a[BT:]).mean() / np.abs(a).mean())
    # (a random tiny model is far more sensitive than the real one: tests/test_real_kv_codec.py holds the bar)
    assert 0 < err["int8"] < err["int4"] < 0.3, err
    assert err["int8"] < 0.05, err


@pytest.mark.parametrize("codec", CODECS)
def test_fork_of_an_open_block_equals_fresh_sequences(tiny_chat32_path: Path, codec: str) -> None:
    """A fork shares the parent's blocks; writing to the shared open block copies its f16 rows."""
    m = load(tiny_chat32_path, codec)
    head = PROMPT[:BT + 3]
    tails = [PROMPT[BT + 3:BT + 9], PROMPT[2:8]]
    parent, _ = prefill(m, head)
    child = m.fork(parent)
    got = [prefill(m, t, start=len(head), seq=s)[1] for s, t in zip((parent, child), tails, strict=True)]
    for t, g in zip(tails, got, strict=True):
        fresh = load(tiny_chat32_path, codec)
        want = prefill(fresh, head + t)[1][len(head):]
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("codec", CODECS)
def test_truncate_into_a_sealed_block_reopens_it(tiny_chat32_path: Path, codec: str) -> None:
    """Cut back into a full block, the kept rows are its decoded values, and writing goes on from them."""
    m = load(tiny_chat32_path, codec)
    seq, _ = prefill(m, PROMPT)
    before = kv_rows(m, seq, 1, range(BT + 4), True)
    m.truncate(seq, BT + 4)
    np.testing.assert_array_equal(kv_rows(m, seq, 1, range(BT + 4), True), before)
    _, logits = prefill(m, PROMPT[BT + 4:BT + 6], start=BT + 4, seq=seq)  # the block stays open
    assert np.isfinite(logits).all()
    # the reopened rows are the decoded values, rounded to f16 in the staging slot
    np.testing.assert_array_equal(kv_rows(m, seq, 1, range(BT, BT + 4), True),
                                  before[BT:].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(kv_rows(m, seq, 1, range(BT), True), before[:BT])  # block 0 untouched


@pytest.mark.parametrize("codec", CODECS)
def test_every_tier_gives_the_same_logits(tiny_chat32_path: Path, codec: str) -> None:
    base = prefill(load(tiny_chat32_path, codec, kernels="generic"), PROMPT, [11, 13, 5])[1]
    for tier in TIERS:
        got = prefill(load(tiny_chat32_path, codec, kernels=tier), PROMPT, [11, 13, 5])[1]
        assert np.array_equal(got.view(np.uint32), base.view(np.uint32)), tier


def test_memory_and_bytes_per_token(tiny_chat32_path: Path) -> None:
    sizes = {}
    for codec in ("f32", "f16", "int8", "int4"):
        m = load(tiny_chat32_path, codec, kv_blocks=6)
        mem = m.memory()
        sizes[codec] = mem["kv_bytes_per_token"]
        assert mem["kv_block_bytes"] == BT * mem["kv_bytes_per_token"]
        assert mem["kv_pool_bytes"] == 6 * mem["kv_block_bytes"]
        if codec.startswith("int"):
            seq, _ = prefill(m, PROMPT[:BT + 2])
            assert mem["kv_staging_bytes"] == 0 and m.memory()["kv_staging_bytes"] > 0  # one open block
            m.free(seq)
    # per (layer, head, token): 32 channels; int8 = 32 + 4 (values' group) + 4 * 32 / 8 (keys' per-channel
    # parameters, spread over the block's 8 tokens) bytes for each of K and V
    layers, heads = 2, 1
    assert sizes["f32"] == layers * heads * 2 * 32 * 4
    assert sizes["f16"] == layers * heads * 2 * 32 * 2
    assert sizes["int8"] == layers * heads * ((32 + 4 * 32 // BT) + (32 + 4))
    assert sizes["int4"] == layers * heads * ((16 + 4 * 32 // BT) + (16 + 4))


def test_codec_needs_heads_of_32_channels(tiny_chat_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32, this model's is 16"):
        Model.load(tiny_chat_path, kv_codec="int8")
    with pytest.raises(ValueError, match="disagree"):
        Model.load(tiny_chat_path, kv_codec="f16", kv_type="f32")
    assert Model.load(tiny_chat_path, kv_type="f32").kv_codec == "f32"
