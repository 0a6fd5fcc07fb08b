"""The in-RAM tier between the pool and the persistent stores: blocks the pool evicted, in their stored
form (the pool's codec, zstd-compressed where that shrinks it, CRC-checked on the way back), kept least
recently used first within a byte budget.

A prefix whose blocks left the pool comes back from here without touching a store; only what this tier
has also dropped is read from the stores (or recomputed).
"""

from __future__ import annotations

import collections
import threading

from .payload import BlockFormatError, BlockLayout, decode, encode


class RamTier:
    def __init__(self, layout: BlockLayout, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"kv_ram_bytes must be a non-negative integer, got {max_bytes!r}")
        self.layout = layout
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.corrupt = 0
        self._blobs: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()  # LRU first
        self._lock = threading.Lock()  # reads run on the restore's reader threads

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blobs

    def put(self, block_hash: bytes, raw: bytes) -> None:
        """Keeps a block the pool is letting go (the oldest ones make room)."""
        if self.max_bytes == 0:
            return
        blob = encode(raw, self.layout, block_hash)
        if len(blob) > self.max_bytes:
            return
        with self._lock:
            old = self._blobs.pop(block_hash, None)
            if old is not None:
                self.bytes -= len(old)
            self._blobs[block_hash] = blob
            self.bytes += len(blob)
            while self.bytes > self.max_bytes:
                _, gone = self._blobs.popitem(last=False)
                self.bytes -= len(gone)

    def read(self, block_hash: bytes) -> bytes | None:
        """The block's raw bytes (it stays, now most recently used), or None; a corrupt one is dropped."""
        with self._lock:
            blob = self._blobs.get(block_hash)
            if blob is None:
                return None
            self._blobs.move_to_end(block_hash)
        try:
            raw = decode(blob, self.layout, block_hash)
        except BlockFormatError:
            self.corrupt += 1
            self.drop(block_hash)
            return None
        self.hits += 1
        return raw

    def drop(self, block_hash: bytes) -> None:
        with self._lock:
            blob = self._blobs.pop(block_hash, None)
            if blob is not None:
                self.bytes -= len(blob)

    def clear(self) -> None:
        with self._lock:
            self._blobs.clear()
            self.bytes = 0
