"""The persistent tier: blocks written through to SQL + blob stores, found again by a fresh pool or
process, never used when corrupt or foreign, and generation unharmed when a store is down.

The same suite runs on SQLite + a directory and on a real PostgreSQL + an S3 endpoint (moto)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_servers import postgres, s3_server

from nlm_native import LLM, SamplingParams
from nlm_native.kvcache import BlockLayout, BlockStore, PrefixIndex, cache_fingerprint
from nlm_native.storage import DirectoryStore, SqlStore

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()


def text(n: int, shift: int = 0) -> str:
    return " ".join(WORDS[(k + shift) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module", params=["sqlite+dir", "postgres+s3"])
def stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite+dir":
        d = tmp_path_factory.mktemp("kv")
        yield f"sqlite:///{d / 'kv.db'}", f"file://{d / 'blobs'}"
        return
    with postgres() as pg, s3_server() as s3:
        yield pg, f"s3://nlm/kv-test?endpoint_url={s3}"


def make(path: Path, stores: tuple[str, str], **kw: object) -> LLM:
    return LLM(path, n_ctx=512, block_tokens=8, kv_type="f32", kv_store=stores[0], blob_store=stores[1], **kw)


def tokens(llm: LLM, ids: list[int]) -> tuple[list[int], int]:
    s = llm.submit(ids, GREEDY)
    out = [t for c in s for t in c.token_ids]
    assert s.metrics is not None
    return out, s.metrics.cached_tokens


def index(llm: LLM) -> PrefixIndex:
    assert isinstance(llm.prefix_cache, PrefixIndex)
    return llm.prefix_cache


def test_a_fresh_pool_restores_what_another_computed(tiny_chat_path: Path, stores: tuple[str, str]) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f32", prefix_cache=False) as plain:
        ids = plain.tokenize(text(60))
        want = plain.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]
    with make(tiny_chat_path, stores) as a:
        got, cached = tokens(a, ids)
        assert got == want and cached == 0
    # a new model instance: an empty pool, the same stores
    with make(tiny_chat_path, stores) as b:
        got, cached = tokens(b, ids)
        assert got == want
        assert cached == (len(ids) - 1) // 8 * 8 or cached == len(ids) - 1
        assert index(b).restored_blocks > 0 and index(b).store.stats.read > 0  # type: ignore[union-attr]


def test_a_corrupt_stored_block_is_dropped_and_recomputed(tiny_chat_path: Path, stores: tuple[str, str]) -> None:
    ids = LLM(tiny_chat_path, n_ctx=64).tokenize(text(40, shift=3))
    with make(tiny_chat_path, stores) as a:
        want, _ = tokens(a, ids)
        store = index(a).store
        assert store is not None
        first = index(a)._chains[next(iter(index(a)._chains))].hashes[0]
        key = store.key(first)
    blob = store.blobs.get(key)
    assert blob is not None
    bad = bytearray(blob)
    bad[-1] ^= 0x01
    store.blobs.delete(key)
    store.blobs.put(key, bytes(bad))
    with make(tiny_chat_path, stores) as b:
        got, cached = tokens(b, ids)
        assert got == want and cached == 0
        assert index(b).store.stats.corrupt == 1  # type: ignore[union-attr]
    with make(tiny_chat_path, stores) as c:  # recomputed and stored again: found next time
        got, cached = tokens(c, ids)
        assert got == want


def test_another_layout_never_uses_these_blocks(tiny_chat_path: Path, stores: tuple[str, str]) -> None:
    ids = LLM(tiny_chat_path, n_ctx=64).tokenize(text(30, shift=5))
    with make(tiny_chat_path, stores) as a:
        tokens(a, ids)
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f16", kv_store=stores[0],
             blob_store=stores[1]) as other:
        _, cached = tokens(other, ids)
        assert cached == 0 and index(other).restored_blocks == 0


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_codec_blocks_persist_and_restore(tiny_chat32_path: Path, tmp_path: Path, codec: str) -> None:
    """A codec pool stores its blocks as the codec's bytes; a fresh pool restores them and generates what
    the computing one did. An f16 pool sharing the stores never takes them."""
    kv = (f"sqlite:///{tmp_path / 'kv.db'}", f"file://{tmp_path / 'blobs'}")
    with LLM(tiny_chat32_path, n_ctx=512, block_tokens=8, kv_codec=codec, prefix_cache=False) as plain:
        ids = plain.tokenize(text(60))
        want = plain.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]
    with LLM(tiny_chat32_path, n_ctx=512, block_tokens=8, kv_codec=codec, kv_store=kv[0], blob_store=kv[1]) as a:
        assert tokens(a, ids) == (want, 0)
        block = a.model.memory()["kv_block_bytes"]
    sizes = {p.stat().st_size for p in (tmp_path / "blobs").rglob("*") if p.is_file()}
    assert sizes and max(sizes) < block + 200  # header + codec bytes (zstd only where it shrinks them)
    with LLM(tiny_chat32_path, n_ctx=512, block_tokens=8, kv_codec=codec, kv_store=kv[0], blob_store=kv[1]) as b:
        got, cached = tokens(b, ids)
        assert got == want and cached == (len(ids) // 8) * 8 and index(b).restored_blocks == len(ids) // 8
    with LLM(tiny_chat32_path, n_ctx=512, block_tokens=8, kv_codec="f16", kv_store=kv[0], blob_store=kv[1]) as c:
        _, cached = tokens(c, ids)
        assert cached == 0 and index(c).restored_blocks == 0


def test_two_writers_of_the_same_blocks_leave_one_row_each(tiny_chat_path: Path, stores: tuple[str, str]) -> None:
    llm = LLM(tiny_chat_path, n_ctx=256, block_tokens=8, kv_type="f32")
    seq = llm.model.new_sequence()
    from nlm_native import Batch
    from nlm_native.kvcache import block_hashes

    ids = llm.tokenize(text(48, shift=7))[:48]
    b = Batch()
    b.add_sequence(ids, 0, seq, logits="none")
    llm.model.forward(b)
    fp = cache_fingerprint(llm.model)
    hashes = block_hashes(ids, 8, fp)
    raws = [llm.model.export_block(seq, i) for i in range(len(hashes))]
    from nlm_native.storage import open_blob_store

    writers = [BlockStore(SqlStore(stores[0]), open_blob_store(stores[1]), BlockLayout.of(llm.model, fp))
               for _ in range(2)]

    def write(w: BlockStore) -> None:
        for i, h in enumerate(hashes):
            w.write(h, hashes[i - 1] if i else None, raws[i])

    ts = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rows = writers[0].sql.get_blocks([h.hex() for h in hashes])
    assert len(rows) == len(hashes)
    assert sum(w.stats.written for w in writers) == len(hashes)
    assert sum(w.stats.already_stored for w in writers) == len(hashes)


def test_generation_goes_on_when_the_stores_are_down(tiny_chat_path: Path, tmp_path: Path) -> None:
    ids = LLM(tiny_chat_path, n_ctx=64).tokenize(text(30, shift=2))
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f32", prefix_cache=False) as plain:
        want = plain.generate(ids, GREEDY)[0].token_ids  # type: ignore[union-attr]
    dead = "s3://nlm/x?endpoint_url=http://127.0.0.1:9"  # nothing listens on port 9
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_type="f32", kv_store=f"sqlite:///{tmp_path / 'kv.db'}",
             blob_store=dead) as m:
        import nlm_native.storage.blobs as blobs_mod

        store = index(m).store
        assert store is not None and isinstance(store.blobs, blobs_mod.S3Store)
        import botocore.config

        store.blobs._client = __import__("boto3").client(  # no retries: fail fast
            "s3", endpoint_url="http://127.0.0.1:9", config=botocore.config.Config(
                retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1))
        got, _ = tokens(m, ids)
        assert got == want
        index(m).flush()
        assert store.stats.errors > 0 and store.stats.written == 0


def test_a_restarted_process_finds_the_prefix(tiny_chat_path: Path, tmp_path: Path) -> None:
    """Process A computes and persists; process B, a fresh interpreter on the same stores, reports the
    cached tokens and continues with the same tokens."""
    script = f"""
import sys
from nlm_native import LLM, SamplingParams
llm = LLM({str(tiny_chat_path)!r}, n_ctx=512, block_tokens=8, kv_type="f32",
          kv_store="sqlite:///{tmp_path / 'kv.db'}", blob_store="file://{tmp_path / 'blobs'}")
ids = llm.tokenize(" ".join(["the rain in spain stays on the plain"] * 12))
s = llm.submit(ids, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
out = [t for c in s for t in c.token_ids]
llm.close()
print(s.metrics.cached_tokens, len(ids), ",".join(map(str, out)))
"""
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    (c_a, n, out_a), (c_b, _, out_b) = runs
    assert int(c_a) == 0 and int(c_b) >= int(n) - 8 and out_a == out_b


def test_hana_statements_compile_for_the_hana_dialect() -> None:
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateTable
    from sqlalchemy_hana.dialect import HANAHDBCLIDialect

    from nlm_native.storage.sql import KV_BLOCKS, KV_SESSIONS

    d = HANAHDBCLIDialect()
    ddl = str(CreateTable(KV_BLOCKS).compile(dialect=d))
    for want in ('CREATE TABLE "KV_BLOCKS"', '"BLOCK_HASH" NVARCHAR(64) NOT NULL', '"BYTE_SIZE" BIGINT',
                 '"LAST_USED" TIMESTAMP NOT NULL', 'PRIMARY KEY ("BLOCK_HASH")'):
        assert want in ddl, (want, ddl)
    assert "DATETIME" not in ddl  # not a HANA type
    assert 'CREATE TABLE "KV_SESSIONS"' in str(CreateTable(KV_SESSIONS).compile(dialect=d))
    from nlm_native.storage.sql import INFERENCE_METRICS

    m = str(CreateTable(INFERENCE_METRICS).compile(dialect=d))
    assert 'CREATE TABLE "INFERENCE_METRICS"' in m and '"TIME" TIMESTAMP NOT NULL' in m and "DATETIME" not in m
    assert str(INFERENCE_METRICS.insert().compile(dialect=d)).count("?") == len(INFERENCE_METRICS.c)
    sel = str(sa.select(KV_BLOCKS).where(KV_BLOCKS.c.BLOCK_HASH.in_(["a", "b"])).compile(dialect=d))
    assert 'FROM "KV_BLOCKS"' in sel and '"BLOCK_HASH" IN (' in sel
    upd = str(KV_BLOCKS.update().where(KV_BLOCKS.c.BLOCK_HASH == "a").values(HITS=KV_BLOCKS.c.HITS + 1)
              .compile(dialect=d))
    assert upd.startswith('UPDATE "KV_BLOCKS" SET') and '"HITS"=("KV_BLOCKS"."HITS" + ?)' in upd.replace(" = ", "=")
    ins = str(KV_BLOCKS.insert().compile(dialect=d))
    assert ins.startswith('INSERT INTO "KV_BLOCKS"') and ins.count("?") == len(KV_BLOCKS.c)  # parameterized
    lru = str(sa.select(KV_BLOCKS).order_by(KV_BLOCKS.c.LAST_USED.desc()).limit(10).compile(dialect=d))
    assert lru.rstrip().endswith("LIMIT ?")


@pytest.mark.skipif(not __import__("os").environ.get("NLM_TEST_HANA_URL"),
                    reason="set NLM_TEST_HANA_URL=hana+hdbcli://user:pass@host:443/?encrypt=true for a live HANA test")
def test_live_hana(tmp_path: Path) -> None:
    import os

    store = SqlStore(os.environ["NLM_TEST_HANA_URL"])
    from nlm_native.storage import BlockRow

    row = BlockRow("00" * 32, "11" * 32, None, 8, "f32", 10, 1, "kv/x/y")
    store.put_block(row)
    assert store.put_block(row) is False
    assert store.get_blocks([row.block_hash])[row.block_hash] == row
    store.touch([row.block_hash])
    assert row in store.retention(max_bytes=0, fingerprint=row.fingerprint)
    assert row not in store.retention(max_bytes=10, fingerprint=row.fingerprint)
    store.delete_blocks([row.block_hash])
    assert store.get_blocks([row.block_hash]) == {}
    store.save_session("nlm-live-test", "11" * 32, None, 0)
    store.save_session("nlm-live-test", "11" * 32, "00" * 32, 40)  # an update
    assert store.load_session("nlm-live-test") == ("11" * 32, "00" * 32, 40)


def test_directory_store_writes_atomically(tmp_path: Path) -> None:
    d = DirectoryStore(tmp_path)
    d.put("kv/a/b", b"x" * 10)
    d.put("kv/a/b", b"y" * 10)  # content-addressed: the first write stays
    assert d.get("kv/a/b") == b"x" * 10 and d.get("kv/a/none") is None
    d.put("kv/a/b", b"z" * 10, overwrite=True)  # a session's record is replaced
    assert d.get("kv/a/b") == b"z" * 10
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    with pytest.raises(ValueError):
        d.put("../escape", b"")


def test_credentials_never_appear_in_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from nlm_native.storage import StoreError, open_blob_store, redact

    url = "postgresql+psycopg2://alice:s3cr3t-pw@127.0.0.1:9/db"  # nothing listens on port 9
    store = SqlStore(url)  # unreachable: it starts anyway (logged), and every operation says so
    with pytest.raises(StoreError) as e:
        store.count_blocks()
    assert "s3cr3t-pw" not in str(e.value) and "alice:***@" in str(e.value)
    assert caplog.records and not any("s3cr3t-pw" in r.getMessage() for r in caplog.records)
    assert redact("hana+hdbcli://u:p%40ss@host:443/?encrypt=true") == "hana+hdbcli://u:***@host:443/?encrypt=true"
    with pytest.raises(ValueError, match="not in the URL") as e2:
        open_blob_store("s3://key:secret@bucket/prefix")
    assert "secret" not in str(e2.value)
    from nlm_native.kvcache import open_block_store

    with pytest.raises(ValueError, match="kv_store too"):
        open_block_store(None, None, f"file://{tmp_path}")
