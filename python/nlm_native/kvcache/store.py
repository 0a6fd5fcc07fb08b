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
import time
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
    evicted: int = 0  # blocks retention removed
    skipped: int = 0  # operations not tried while the stores rested after a failure


class BlockStore:
    """One model layout's blocks in a SQL store and a blob store.

    Retention: with ``max_bytes`` and/or ``max_age_s`` set, every ``retention_every`` writes (and on
    :meth:`apply_retention`) the least recently used blocks of this layout go until the rest fit;
    a restore marks its blocks used."""

    def __init__(self, sql: SqlStore, blobs: BlobStore, layout: BlockLayout, *, max_bytes: int | None = None,
                 max_age_s: float | None = None, retention_every: int = 64) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
            raise ValueError(f"kv_max_bytes must be a non-negative integer, got {max_bytes!r}")
        if max_age_s is not None and not (isinstance(max_age_s, int | float) and max_age_s > 0):
            raise ValueError(f"kv_max_age_s must be a positive number of seconds, got {max_age_s!r}")
        self.sql = sql
        self.blobs = blobs
        self.layout = layout
        self.fp_hex = layout.fingerprint.hex()
        self.stats = StoreStats()
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.retention_every = retention_every
        self._since_retention = 0
        # After a failure the stores rest a while (1 s, doubling to 60 s), so that requests recompute at
        # full speed instead of each waiting on retries and timeouts of an unreachable or slow store.
        self._down_until = 0.0
        self._failures = 0
        self._lock = threading.Lock()

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: Exception) -> None:
        with self._lock:
            self.stats.errors += 1
            self._failures += 1
            rest = min(60.0, 2.0 ** (self._failures - 1))
            self._down_until = time.monotonic() + rest
        log.warning("%s (the KV stores rest %.0f s; requests recompute meanwhile)", e, rest)

    def _ok(self) -> None:
        self._failures = 0

    def apply_retention(self) -> int:
        """Evicts what the policy says must go, rows first and then their payloads (so no row ever points
        at a missing payload); returns how many blocks went."""
        if self.max_bytes is None and self.max_age_s is None:
            return 0
        self._since_retention = 0
        rows = self.sql.retention(max_bytes=self.max_bytes, max_age_s=self.max_age_s, fingerprint=self.fp_hex)
        if rows:
            self.sql.delete_blocks([r.block_hash for r in rows])
            for r in rows:
                self.blobs.delete(r.blob_key)
            self.stats.evicted += len(rows)
        return len(rows)

    def touch(self, hashes: Sequence[bytes]) -> None:
        """Restored blocks were used (their LAST_USED and HITS go up, for LRU retention)."""
        self.sql.touch([h.hex() for h in hashes])

    def key(self, block_hash: bytes) -> str:
        return f"kv/{self.fp_hex}/{block_hash.hex()}"

    def write(self, block_hash: bytes, parent: bytes | None, raw: bytes) -> None:
        """Store one block (payload first, then its row: a row always has its payload). While the stores
        rest after a failure the block is dropped (counted): the cache is best effort, requests are not."""
        if not self.available():
            self.stats.skipped += 1
            return
        try:
            self._write(block_hash, parent, raw)
        except (StoreError, OSError) as e:
            self._failed(e)
            return
        self._ok()

    def _write(self, block_hash: bytes, parent: bytes | None, raw: bytes) -> None:
        blob = encode(raw, self.layout, block_hash)
        from ..core import crc32c

        self.blobs.put(self.key(block_hash), blob)
        new = self.sql.put_block(BlockRow(block_hash.hex(), self.fp_hex, parent.hex() if parent else None,
                                          self.layout.block_tokens, self.layout.codec, len(blob), crc32c(blob),
                                          self.key(block_hash)))
        if new:
            self.stats.written += 1
            self._since_retention += 1
            if self._since_retention >= self.retention_every:
                self.apply_retention()
        else:
            self.stats.already_stored += 1

    def stored(self, hashes: Sequence[bytes]) -> set[bytes]:
        """Those of ``hashes`` the metadata knows for this model and layout (an unreachable store: none)."""
        if not self.available():
            self.stats.skipped += 1
            return set()
        try:
            rows = self.sql.get_blocks([h.hex() for h in hashes])
        except StoreError as e:
            self._failed(e)
            return set()
        self._ok()
        return {h for h in hashes if (r := rows.get(h.hex())) is not None and r.fingerprint == self.fp_hex
                and r.codec == self.layout.codec}

    def read(self, block_hash: bytes) -> bytes | None:
        """The raw KV bytes of a stored block, or None (missing, unreachable, or corrupt and now dropped)."""
        if not self.available():
            self.stats.skipped += 1
            return None
        try:
            blob = self.blobs.get(self.key(block_hash))
        except StoreError as e:
            self._failed(e)
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
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nlm-kv-writer", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (w := ref()) is not None and w.close())

    def submit(self, block_hash: bytes, parent: bytes | None, raw: bytes) -> None:
        self._put((block_hash, parent, raw))

    def submit_job(self, job: Callable[[], None]) -> None:
        """Any other write (a session's record), in order after the blocks submitted before it."""
        self._put(job)

    def _put(self, item: tuple[bytes, bytes | None, bytes] | Callable[[], None]) -> None:
        with self._lock:
            if self._closed:  # after close (at exit): written now, on the caller's thread
                self._do(item)
                return
            self._q.put(item)

    def flush(self) -> None:
        """Return once every block submitted so far is written (or has failed, counted)."""
        self._q.join()

    def close(self) -> None:
        """Flush, apply the retention policy and stop the thread (at exit too); later writes run inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(self.store.apply_retention)
            self._q.put(None)
        self._thread.join()

    def _do(self, item: tuple[bytes, bytes | None, bytes] | Callable[[], None]) -> None:
        try:
            if callable(item):
                item()
            else:
                self.store.write(*item)
        except Exception as e:  # counted and logged: the writer thread never dies of one write
            self.store.stats.errors += 1
            what = "a session" if callable(item) else f"KV block {item[0].hex()[:16]}"
            log.warning("%s not stored: %s", what, e)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._do(item)
            finally:
                self._q.task_done()


def default_blob_dir() -> str:
    from ..core.fetch import cache_dir

    return str(cache_dir() / "kv-blobs")


def open_block_store(model: object, kv_url: str | None, blob_url: str | None, *, max_bytes: int | None = None,
                     max_age_s: float | None = None) -> BlockStore | None:
    """The persistent tier for ``model`` from two URLs (None when neither is given)."""
    from ..storage import open_blob_store
    from .hashing import cache_fingerprint

    if not kv_url and not blob_url:
        return None
    if not kv_url:
        raise ValueError("blob_store needs kv_store too: the SQL database that indexes the stored blocks "
                         "(for example sqlite:///kv.db)")
    blobs = open_blob_store(blob_url or default_blob_dir())
    return BlockStore(SqlStore(kv_url), blobs, BlockLayout.of(model, cache_fingerprint(model)),  # type: ignore[arg-type]
                      max_bytes=max_bytes, max_age_s=max_age_s)
