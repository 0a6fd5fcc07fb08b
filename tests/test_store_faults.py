"""The persistent tier under pressure: retention (bytes and age, least recently used first), a database
that is unreachable or slow, and a process killed with writes pending."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nlm_native import LLM, SamplingParams
from nlm_native.kvcache import PrefixIndex, block_hashes

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()


def text(i: int, n: int = 44) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def stores(tmp: Path, db: str = "kv.db") -> dict[str, str]:
    return {"kv_store": f"sqlite:///{tmp / db}", "blob_store": f"file://{tmp / 'blobs'}"}


def index(llm: LLM) -> PrefixIndex:
    assert isinstance(llm.prefix_cache, PrefixIndex)
    return llm.prefix_cache


def gen(llm: LLM, prompt: str | list[int]) -> tuple[list[int], int]:
    s = llm.submit(prompt, GREEDY)
    out = [t for c in s for t in c.token_ids]
    assert s.metrics is not None
    return out, s.metrics.cached_tokens


def rows(tmp: Path, db: str = "kv.db") -> list[tuple[str, int, str]]:
    with sqlite3.connect(tmp / db) as c:
        return c.execute("SELECT BLOCK_HASH, BYTE_SIZE, BLOB_KEY FROM KV_BLOCKS ORDER BY LAST_USED").fetchall()


def test_retention_by_bytes_keeps_the_most_recently_used(tiny_chat_path: Path, tmp_path: Path) -> None:
    prompts = [text(i) for i in range(4)]
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as a:
        for p in prompts:
            gen(a, p)
            index(a).flush()
            time.sleep(0.01)  # distinct LAST_USED times
    written = rows(tmp_path)
    size = written[0][1]
    keep = 24 * size  # room for about one prompt's blocks (a prompt is 19 blocks of this tokenizer)
    # prompt 0 (the oldest) is used again by a fresh process: a restore marks its blocks used
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_max_bytes=keep, **stores(tmp_path)) as b:
        _, cached = gen(b, prompts[0])
        assert cached > 0
        index(b).flush()
        store = index(b).store
        assert store is not None
        gone = store.apply_retention()
    left = rows(tmp_path)
    assert gone == len(written) - len(left) > 0 and sum(r[1] for r in left) <= keep
    ids = b.tokenize(prompts[0], special=True)
    p0 = {h.hex() for h in block_hashes(ids, 8, index(b).root)[:(len(ids) - 1) // 8]}  # the blocks it restored
    assert p0 <= {r[0] for r in left}, "the most recently used blocks stay"
    blobs = {p.relative_to(tmp_path / "blobs").as_posix() for p in (tmp_path / "blobs").rglob("*") if p.is_file()}
    assert {r[2] for r in left} <= blobs and not ({r[2] for r in written} - {r[2] for r in left}) & blobs


def test_retention_by_age_and_on_close(tiny_chat_path: Path, tmp_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as a:
        gen(a, text(1))
        gen(a, text(7))
    before = rows(tmp_path)
    old = [r[0] for r in before[:3]]
    with sqlite3.connect(tmp_path / "kv.db") as c:
        c.executemany("UPDATE KV_BLOCKS SET LAST_USED = '2020-01-01 00:00:00' WHERE BLOCK_HASH = ?",
                      [(h,) for h in old])
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_max_age_s=3600, **stores(tmp_path)):
        pass  # closing applies the policy
    assert {r[0] for r in rows(tmp_path)} == {r[0] for r in before} - set(old)
    with pytest.raises(ValueError, match="kv_max_bytes"):
        LLM(tiny_chat_path, n_ctx=64, kv_max_bytes=-1, **stores(tmp_path))
    with pytest.raises(ValueError, match="NLM_KV_MAX_AGE_S"):
        import os

        os.environ["NLM_KV_MAX_AGE_S"] = "soon"
        try:
            LLM(tiny_chat_path, n_ctx=64, **stores(tmp_path))
        finally:
            del os.environ["NLM_KV_MAX_AGE_S"]


def test_an_unreachable_database_costs_recomputation_not_requests(tiny_chat_path: Path, tmp_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, prefix_cache=False) as plain:
        want = [plain.generate(text(i), GREEDY)[0].token_ids for i in range(3)]  # type: ignore[union-attr]
    dead = "postgresql+psycopg2://nlm:secret@127.0.0.1:9/kv"  # nothing listens on port 9
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_store=dead, blob_store=f"file://{tmp_path}") as m:
        store = index(m).store
        assert store is not None
        t = time.monotonic()
        got = [gen(m, text(i))[0] for i in range(3)]
        index(m).flush()
        assert got == want
        assert store.stats.errors >= 1 and store.stats.skipped >= 1  # failed once, then rested
        assert time.monotonic() - t < 20
        assert store.stats.written == 0


def test_a_slow_database_is_waited_for_once(tiny_chat_path: Path, tmp_path: Path) -> None:
    """Another connection holds the SQLite file's write lock: the store's operations time out, are
    counted, and requests go on recomputing without waiting on it again."""
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as a:
        first = gen(a, text(2))[0]
    url = f"sqlite:///{tmp_path / 'kv.db'}?timeout=0.3"
    lock = sqlite3.connect(tmp_path / "kv.db", isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_store=url, blob_store=f"file://{tmp_path / 'blobs'}",
                 prefix_cache=True) as m:
            store = index(m).store
            assert store is not None
            got, cached = gen(m, text(2))
            assert got == first and cached == 0  # recomputed: the rows could not be read
            t = time.monotonic()
            gen(m, text(5))
            assert time.monotonic() - t < 2.0  # the store rests: no second round of timeouts
            assert store.stats.errors >= 1 and store.stats.skipped >= 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as again:  # nothing was lost
        got, cached = gen(again, text(2))
        assert got == first and cached > 0


def test_a_killed_process_leaves_only_whole_blocks(tiny_chat_path: Path, tmp_path: Path) -> None:
    """A process killed (SIGKILL) while its writer thread is busy: every row it left has its payload,
    every payload decodes, and the next process uses them."""
    script = textwrap.dedent(f"""
        from nlm_native import LLM, SamplingParams
        WORDS = {WORDS!r}
        llm = LLM({str(tiny_chat_path)!r}, n_ctx=512, block_tokens=8, kv_store={stores(tmp_path)["kv_store"]!r},
                  blob_store={stores(tmp_path)["blob_store"]!r})
        print("ready", flush=True)
        i = 0
        while True:
            prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(44)) + f" {{i}}"
            list(llm.submit(prompt, SamplingParams(max_tokens=2, temperature=0)))
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not (tmp_path / "kv.db").exists() or len(rows(tmp_path)) < 20):
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    left = rows(tmp_path)
    assert len(left) >= 20
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as b:
        store = index(b).store
        assert store is not None
        assert all(store.blobs.get(r[2]) is not None for r in left), "a row without its payload"
        raws = [store.read(bytes.fromhex(r[0])) for r in left]
        assert all(r is not None for r in raws) and store.stats.corrupt == 0
        _, cached = gen(b, text(0) + " 0")
        assert cached > 0


def test_concurrent_restores_read_ahead(tiny_chat_path: Path, tmp_path: Path) -> None:
    """The restore reads blocks on reader threads ahead of the appends (pipelined), in order."""
    long = text(3, 150)
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, **stores(tmp_path)) as a:
        want = gen(a, long)[0]
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, **stores(tmp_path)) as b:
        seen: list[str] = []
        store = index(b).store
        assert store is not None
        read = store.read

        def spy(h: bytes) -> bytes | None:
            seen.append(threading.current_thread().name)
            return read(h)

        store.read = spy  # type: ignore[method-assign]
        got, cached = gen(b, long)
        assert got == want and cached >= 144
        assert len(seen) == cached // 8 and all(n.startswith("nlm-kv-reader") for n in seen)
