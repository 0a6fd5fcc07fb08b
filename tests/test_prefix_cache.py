"""In-memory prefix reuse: block hashes, and requests sharing the pool blocks of earlier prompts."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from forward_probe import BatchSizes

from nlm_native import LLM, Model, SamplingParams
from nlm_native.kvcache import PrefixIndex, block_hashes, cache_fingerprint

WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


@pytest.fixture
def pair(tiny_chat_path: Path) -> Iterator[tuple[LLM, LLM]]:
    """The same model with and without the prefix cache (blocks of 8 tokens)."""
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f32", prefix_cache=True) as cached, \
            LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f32", prefix_cache=False) as plain:
        yield cached, plain
        cached.engine.close()
        assert cached.model.kv_free_blocks == cached.model.kv_blocks, "closing gives the kept blocks back"


def test_block_hashes_are_a_chain_and_stable_across_processes() -> None:
    root = hashlib.sha256(b"root").digest()
    a = block_hashes(list(range(40)), 8, root)
    b = block_hashes(list(range(32)) + [99] * 8, 8, root)
    assert len(a) == 5 and a[:4] == b[:4] and a[4] != b[4]
    assert block_hashes(list(range(39)), 8, root) == a[:4]  # a partial block has no hash
    assert block_hashes(list(range(40)), 8, hashlib.sha256(b"other").digest())[0] != a[0]
    # the chain is SHA-256 of (previous || int32 little-endian ids): recomputed here by hand
    want = hashlib.sha256(root + np.arange(8, dtype="<i4").tobytes()).digest()
    assert a[0] == want
    code = ("import hashlib; from nlm_native.kvcache import block_hashes; "
            "print(block_hashes(list(range(40)), 8, hashlib.sha256(b'root').digest())[-1].hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == a[-1].hex()


def test_the_fingerprint_covers_block_size_and_kv_type(tiny_chat_path: Path) -> None:
    prints = {cache_fingerprint(Model.load(tiny_chat_path, n_ctx=64, block_tokens=bt, kv_type=kv))
              for bt in (8, 16) for kv in ("f16", "f32")}
    assert len(prints) == 4


def test_a_repeated_prompt_computes_only_its_last_token(pair: tuple[LLM, LLM], monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    cached, plain = pair
    ids = cached.tokenize(text(0, 40))
    want = plain.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]
    first = cached.submit(ids, GREEDY)
    assert [t for c in first for t in c.token_ids] == want
    assert first.metrics is not None and first.metrics.cached_tokens == 0
    sizes = BatchSizes(cached, monkeypatch)
    again = cached.submit(ids, GREEDY)
    assert [t for c in again for t in c.token_ids] == want
    full = len(ids) // 8 * 8
    assert again.metrics is not None and again.metrics.cached_tokens == min(full, len(ids) - 1)
    assert sizes.sizes[0] == len(ids) - again.metrics.cached_tokens


def test_a_shared_prefix_is_reused_and_the_rest_computed(pair: tuple[LLM, LLM]) -> None:
    cached, plain = pair
    head = cached.tokenize(text(1, 30))
    a, b = head + cached.tokenize(" and then it rained"), head + cached.tokenize(" but the sun came out")
    for ids in (a, b):
        want = plain.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]
        s = cached.submit(ids, GREEDY)
        assert [t for c in s for t in c.token_ids] == want
    assert s.metrics is not None and s.metrics.cached_tokens == len(head) // 8 * 8
    r = cached.create_completion(b, max_tokens=4, temperature=0)
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(head) // 8 * 8


def test_kept_blocks_make_way_when_the_pool_is_needed(tiny_chat_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=256, kv_blocks=24, block_tokens=8, kv_type="f32", prefix_cache=True) as m, \
            LLM(tiny_chat_path, n_ctx=256, kv_blocks=24, block_tokens=8, kv_type="f32", prefix_cache=False) as plain:
        idx = m.prefix_cache
        assert isinstance(idx, PrefixIndex)
        for i in range(12):  # 12 prompts of 5 full blocks each: far more than the pool keeps
            ids = m.tokenize(text(i, 44))[:41]
            assert alone(m, ids) == alone(plain, ids), i
        assert 0 < idx.reclaimable_blocks() <= 24
        before = m.model.kv_free_blocks
        lru = next(iter(idx._chains.values()))
        n = len(lru.hashes)
        assert idx.evict(m.model, 1) >= 0 and len(lru.hashes) == n - 1  # the oldest chain lost its tail
        assert m.model.kv_free_blocks >= before
        m.engine.close()
        assert m.model.kv_free_blocks == m.model.kv_blocks


def alone(llm: LLM, ids: list[int]) -> list[int]:
    return llm.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]


def test_the_next_turn_finds_the_answer_too(pair: tuple[LLM, LLM]) -> None:
    """A finished request's generated tokens are kept with its prompt: a follow-up that repeats prompt and
    answer (a conversation's next turn) reuses both, and generates what the plain model does."""
    cached, plain = pair
    ids = cached.tokenize(text(2, 21))
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    answer = [t for c in cached.submit(ids, params) for t in c.token_ids]
    follow = ids + answer + cached.tokenize(" and so")
    s = cached.submit(follow, GREEDY)
    got = [t for c in s for t in c.token_ids]
    assert s.metrics is not None
    held = len(ids) + len(answer) - 1  # the last answer token was never fed back
    assert s.metrics.cached_tokens == held // 8 * 8 > len(ids)
    assert got == plain.generate(follow, GREEDY)[0].token_ids  # type: ignore[union-attr]
    idx = cached.prefix_cache
    # each chain gave way to the one extending it: prompt, prompt + answer, then the follow-up's
    assert isinstance(idx, PrefixIndex) and len(idx) == 1


def test_blocks_the_pool_evicts_come_back_from_the_ram_tier(tiny_chat_path: Path) -> None:
    """A small pool: other prompts push a prompt's kept blocks out; they go to the in-RAM tier (bounded in
    bytes, least recently used first) and come back from it, checked, with the plain model's tokens."""
    kw = {"n_ctx": 256, "kv_blocks": 40, "block_tokens": 8, "kv_type": "f32"}
    with LLM(tiny_chat_path, **kw) as m, LLM(tiny_chat_path, prefix_cache=False, **kw) as plain:
        idx = m.prefix_cache
        assert isinstance(idx, PrefixIndex) and idx.ram is not None
        first = m.tokenize(text(0, 44))[:41]
        alone(m, first)
        for i in range(1, 9):  # each prompt's 5 blocks; the pool keeps about 7 prompts' worth
            alone(m, m.tokenize(text(i, 44))[:41])
        assert len(idx.ram) > 0 and idx.ram.bytes <= idx.ram.max_bytes
        s = m.submit(first, GREEDY)
        got = [t for c in s for t in c.token_ids]
        assert got == alone(plain, first)
        assert s.metrics is not None and s.metrics.cached_tokens == 40 and idx.ram_blocks > 0
        assert idx.restored_blocks == 0  # no store configured: all of it from RAM
        # a damaged RAM block is dropped and recomputed
        h = next(iter(idx.ram._blobs))
        blob = bytearray(idx.ram._blobs[h])
        blob[-1] ^= 0xFF
        idx.ram._blobs[h] = bytes(blob)
        assert idx.ram.read(h) is None and idx.ram.corrupt == 1 and h not in idx.ram
    with LLM(tiny_chat_path, kv_ram_bytes=0, **kw) as off:
        assert off.prefix_cache is not None and off.prefix_cache.ram is not None
        for i in range(9):
            alone(off, off.tokenize(text(i, 44))[:41])
        assert len(off.prefix_cache.ram) == 0
    with pytest.raises(ValueError, match="kv_ram_bytes"):
        LLM(tiny_chat_path, kv_ram_bytes=-5, **kw)
