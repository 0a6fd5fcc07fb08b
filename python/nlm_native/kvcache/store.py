"""The persistent tier: blocks written through to the stores behind the requests, and read back.

A :class:`BlockStore` pairs the SQL metadata with a blob store for one model's cache layout. Writes go
through :class:`WriteBehind`, a background thread, so a request never waits for a store; pending
writes are flushed on ``close()`` and at interpreter exit. A block that fails any check when read
(its CRC, its header, its model) is dropped from both stores and counted, and the caller computes it
again: a corrupt block never becomes KV.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..storage import BlobStore, BlockRow, SqlStore, StoreError
from .payload import BlockFormatError, BlockLayout, decode, encode

log = logging.getLogger("nlm_native.kvcache")


@dataclass
class StoreStats:
    written: int = 0
    already_stored: int = 0
    read: int = 0
    corrupt: int = 0  # blocks that failed a check and were dropped
    errors: int = 0  # store operations that failed (unreachable, refused)


class BlockStore:
    def __init__(self, sql: SqlStore, blobs: BlobStore, layout: BlockLayout) -> None:
        self.sql = sql
        self.blobs = blobs
        self.layout = layout
        self.fp_hex = layout.fingerprint.hex()
        self.stats = StoreStats()

    def key(self, block_hash: bytes) -> str:
        return f"kv/{self.fp_hex}/{block_hash.hex()}"

    def write(self, block_hash: bytes, parent: bytes | None, raw: bytes) -> None:
        """Store one block (payload first, then its row: a row always has its payload)."""
        blob = encode(raw, self.layout, block_hash)
        from ..core import crc32c

        self.blobs.put(self.key(block_hash), blob)
        new = self.sql.put_block(BlockRow(block_hash.hex(), self.fp_hex, parent.hex() if parent else None,
                                          self.layout.block_tokens, self.layout.codec, len(blob), crc32c(blob),
                                          self.key(block_hash)))
        if new:
            self.stats.written += 1
        else:
            self.stats.already_stored += 1

    def stored(self, hashes: Sequence[bytes]) -> set[bytes]:
        """Those of ``hashes`` the metadata knows for this model and layout (an unreachable store: none)."""
        try:
            rows = self.sql.get_blocks([h.hex() for h in hashes])
        except StoreError as e:
            self.stats.errors += 1
            log.warning("%s", e)
            return set()
        return {h for h in hashes if (r := rows.get(h.hex())) is not None and r.fingerprint == self.fp_hex
                and r.codec == self.layout.codec}

    def read(self, block_hash: bytes) -> bytes | None:
        """The raw KV bytes of a stored block, or None (missing, unreachable, or corrupt and now dropped)."""
        try:
            blob = self.blobs.get(self.key(block_hash))
        except StoreError as e:
            self.stats.errors += 1
            log.warning("%s", e)
            return None
        if blob is None:
            return None
        try:
            raw = decode(blob, self.layout, block_hash)
        except BlockFormatError as e:
            self.stats.corrupt += 1
            log.warning("stored block %s dropped: %s", block_hash.hex()[:16], e)
            try:
                self.sql.delete_blocks([block_hash.hex()])
                self.blobs.delete(self.key(block_hash))
            except StoreError as e2:
                self.stats.errors += 1
                log.warning("%s", e2)
            return None
        self.stats.read += 1
        return raw


class WriteBehind:
    """Writes blocks to a :class:`BlockStore` on a background thread, in arrival order."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._q: queue.Queue[tuple[bytes, bytes | None, bytes] | Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="nlm-kv-writer", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (w := ref()) is not None and w.close())

    def submit(self, block_hash: bytes, parent: bytes | None, raw: bytes) -> None:
        self._q.put((block_hash, parent, raw))

    def submit_job(self, job: Callable[[], None]) -> None:
        """Any other write (a session's record), in order after the blocks submitted before it."""
        self._q.put(job)

    def flush(self) -> None:
        """Return once every block submitted so far is written (or has failed, counted)."""
        self._q.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self.flush()
            self._q.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                try:
                    if callable(item):
                        item()
                    else:
                        self.store.write(*item)
                except Exception as e:  # counted and logged: the writer thread never dies of one write
                    self.store.stats.errors += 1
                    what = "a session" if callable(item) else f"KV block {item[0].hex()[:16]}"
                    log.warning("%s not stored: %s", what, e)
            finally:
                self._q.task_done()


def default_blob_dir() -> str:
    from ..core.fetch import cache_dir

    return str(cache_dir() / "kv-blobs")


def open_block_store(model: object, kv_url: str | None, blob_url: str | None) -> BlockStore | None:
    """The persistent tier for ``model`` from two URLs (None when neither is given)."""
    from ..storage import open_blob_store
    from .hashing import cache_fingerprint

    if not kv_url and not blob_url:
        return None
    if not kv_url:
        raise ValueError("blob_store needs kv_store too: the SQL database that indexes the stored blocks "
                         "(for example sqlite:///kv.db)")
    blobs = open_blob_store(blob_url or default_blob_dir())
    return BlockStore(SqlStore(kv_url), blobs, BlockLayout.of(model, cache_fingerprint(model)))  # type: ignore[arg-type]
