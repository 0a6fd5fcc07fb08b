"""The batched, multi-sequence API over the paged KV cache."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from nlm_native import Batch, KVCacheFull, Model

rng = np.random.default_rng(5)
PROMPT = [int(t) for t in rng.integers(0, 320, size=37)]  # not a multiple of the block size
CONT_A = [int(t) for t in rng.integers(0, 320, size=11)]
CONT_B = [int(t) for t in rng.integers(0, 320, size=13)]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=["qwen2", "llama-q8"])
def model(request: pytest.FixtureRequest, tiny_qwen2_path: Path, tiny_llama_q8_path: Path) -> Model:
    path = tiny_qwen2_path if request.param == "qwen2" else tiny_llama_q8_path
    return Model.load(path, n_threads=2, n_ctx=128, kv_blocks=64, block_tokens=8)


def prefill(model: Model, seq: int, tokens: list[int], logits: str = "all") -> np.ndarray:
    b = Batch()
    b.add_sequence(tokens, model.sequence_length(seq), seq, logits=logits)
    return model.forward(b)


def steps(model: Model, seq: int, tokens: list[int]) -> np.ndarray:
    return np.concatenate([prefill(model, seq, [t]) for t in tokens])


def test_prefill_equals_single_steps(model: Model) -> None:
    all_at_once = model.eval(PROMPT)
    seq = model.new_sequence()
    one_by_one = steps(model, seq, PROMPT)
    np.testing.assert_allclose(all_at_once, one_by_one, **TOL)
    # and chunked prefill of uneven pieces
    seq2 = model.new_sequence()
    chunks = np.concatenate([prefill(model, seq2, PROMPT[a:b]) for a, b in [(0, 5), (5, 21), (21, 37)]])
    np.testing.assert_allclose(all_at_once, chunks, **TOL)


def test_two_sequences_in_one_batch_equal_each_alone(model: Model) -> None:
    alone_a = model.eval(PROMPT)
    alone_b = model.eval(CONT_B)
    sa, sb = model.new_sequence(), model.new_sequence()
    b = Batch()
    # interleave the two sequences' entries in one batch
    for i in range(max(len(PROMPT), len(CONT_B))):
        if i < len(PROMPT):
            b.add(PROMPT[i], i, sa, logits=True)
        if i < len(CONT_B):
            b.add(CONT_B[i], i, sb, logits=True)
    out = model.forward(b)
    rows_a = [i for i, s in enumerate(b.seq_ids) if s == sa]
    rows_b = [i for i, s in enumerate(b.seq_ids) if s == sb]
    np.testing.assert_allclose(out[rows_a], alone_a, **TOL)
    np.testing.assert_allclose(out[rows_b], alone_b, **TOL)
    # decode step for both at once equals separate continuation
    b2 = Batch()
    b2.add(CONT_A[0], len(PROMPT), sa, logits=True)
    b2.add(CONT_A[1], len(CONT_B), sb, logits=True)
    both = model.forward(b2)
    np.testing.assert_allclose(both[0], model.eval(PROMPT + CONT_A[:1])[-1], **TOL)
    np.testing.assert_allclose(both[1], model.eval(CONT_B + CONT_A[1:2])[-1], **TOL)


def test_fork_continues_like_the_original(model: Model) -> None:
    parent = model.new_sequence()
    prefill(model, parent, PROMPT, logits="none")
    free_before = model.kv_free_blocks
    child = model.fork(parent)
    assert model.kv_free_blocks == free_before  # shared, nothing copied yet
    assert model.sequence_length(child) == len(PROMPT)
    out_child = prefill(model, child, CONT_B)      # writes into the shared partial block: copy on write
    out_parent = prefill(model, parent, CONT_A)
    np.testing.assert_allclose(out_child, model.eval(PROMPT + CONT_B)[len(PROMPT):], **TOL)
    np.testing.assert_allclose(out_parent, model.eval(PROMPT + CONT_A)[len(PROMPT):], **TOL)


def test_fork_shares_full_blocks_and_free_returns_them(model: Model) -> None:
    total = model.kv_blocks
    seq = model.new_sequence()
    prefill(model, seq, PROMPT[:32], logits="none")  # exactly 4 full blocks of 8
    assert model.kv_free_blocks == total - 4
    child = model.fork(seq)
    prefill(model, child, CONT_A, logits="none")   # 11 more tokens -> 2 new blocks, no copy
    assert model.kv_free_blocks == total - 6
    model.free(seq)
    assert model.kv_free_blocks == total - 6       # child still holds the shared blocks
    model.free(child)
    assert model.kv_free_blocks == total


def test_truncate_then_continue(model: Model) -> None:
    seq = model.new_sequence()
    prefill(model, seq, PROMPT + CONT_A, logits="none")
    model.truncate(seq, len(PROMPT))
    out = prefill(model, seq, CONT_B)
    np.testing.assert_allclose(out, model.eval(PROMPT + CONT_B)[len(PROMPT):], **TOL)


def test_bad_input_raises_and_changes_nothing(model: Model) -> None:
    seq = model.new_sequence()
    prefill(model, seq, PROMPT[:10], logits="none")
    free = model.kv_free_blocks
    cases: list[tuple[Batch, type[Exception], str]] = []
    b = Batch()
    b.add(3, 10, seq)
    b.add(model.n_vocab, 11, seq)
    cases.append((b, ValueError, "token id"))
    b = Batch()
    b.add(3, 10, seq)
    b.add(4, 0, 999)
    cases.append((b, ValueError, "unknown sequence"))
    b = Batch()
    b.add(3, -1, seq)
    cases.append((b, ValueError, "negative position"))
    b = Batch()
    b.add_sequence([1] * (model.n_ctx - 9), 10, seq)
    cases.append((b, ValueError, "n_ctx"))
    for batch, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            model.forward(batch)
        assert model.sequence_length(seq) == 10
        assert model.kv_free_blocks == free
    with pytest.raises(ValueError, match="empty"):
        model.forward(Batch())
    with pytest.raises(ValueError, match="empty"):
        model.eval([])
    # the sequence still works and gives the right answer
    np.testing.assert_allclose(prefill(model, seq, PROMPT[10:]), model.eval(PROMPT)[10:], **TOL)


def test_kv_pool_full_raises_and_changes_nothing(tiny_qwen2_path: Path) -> None:
    model = Model.load(tiny_qwen2_path, n_threads=1, n_ctx=64, kv_blocks=3, block_tokens=8)
    want = model.eval(PROMPT[:9])
    a = model.new_sequence()
    prefill(model, a, PROMPT[:16], logits="none")  # 2 blocks
    b = model.new_sequence()
    with pytest.raises(KVCacheFull, match="KV cache full"):
        prefill(model, b, PROMPT[:9])               # needs 2 blocks, 1 free
    assert model.kv_free_blocks == 1 and model.sequence_length(b) == 0
    model.free(a)
    np.testing.assert_allclose(prefill(model, b, PROMPT[:9]), want, **TOL)


def test_concurrent_forward_from_threads(model: Model) -> None:
    want = model.eval(PROMPT)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(model.eval(PROMPT))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_allclose(r, want, **TOL)
