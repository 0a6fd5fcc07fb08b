"""The in-memory prefix index: finished prompts' full KV blocks stay in the pool, found again by hash.

When a prompt's cache is complete (the engine's ``prefilled`` event), the index forks its sequence,
keeps the full blocks (the fork is truncated to them) and records the hash of each block prefix. A
new request's admission looks up its longest cached prefix of full blocks, forks the kept sequence
and truncates it to what the request can use (at most all but its last prompt token): the request
shares those blocks and computes only the rest, copying a shared partial block on write.

Kept blocks cost pool room, so they go when room is needed (``evict``): least recently used chains
first, from their tails (a chain is truncated block by block, so its most shared prefix stays the
longest).
"""

from __future__ import annotations

import collections
import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core import KVCacheFull, Model
from .hashing import block_hashes, cache_fingerprint
from .ramtier import RamTier
from .store import BlockStore, WriteBehind


@dataclass
class _Chain:
    seq: int  # the index's own sequence: it holds blocks[0 : len(hashes)]
    hashes: list[bytes] = field(default_factory=list)


class PrefixIndex:
    """A :class:`~nlm_native.engine.PrefixCache` that reuses pool blocks across requests."""

    def __init__(self, model: Model, *, max_chains: int = 1024, store: BlockStore | None = None,
                 ram: RamTier | None = None, prefetch: int = 4) -> None:
        self.model = model
        self.store = store
        self.writer = WriteBehind(store) if store is not None else None
        self._persisted: set[bytes] = set()  # hashes this process has written (or found) in the store
        self.restored_blocks = 0  # from the persistent store
        self.ram = ram
        self.ram_blocks = 0  # from the RAM tier
        self.bt = model.block_tokens
        self.exact_blocks = model.kv_codec in ("int8", "int4")  # hits end on a block boundary
        self.root = cache_fingerprint(model)
        self.prefetch = prefetch
        self._readers: ThreadPoolExecutor | None = None
        self.max_chains = max_chains
        self._chains: collections.OrderedDict[int, _Chain] = collections.OrderedDict()  # by seq, LRU first
        self._by_hash: dict[bytes, tuple[int, int]] = {}  # block hash -> (chain seq, blocks)
        self.hits = 0
        self.misses = 0
        self.hit_tokens = 0

    # --- the PrefixCache protocol -----------------------------------------------------------------

    def lookup(self, model: Model, prompt: list[int]) -> tuple[int, int] | None:
        hashes = block_hashes(prompt, self.bt, self.root)
        usable = -(-(len(prompt) - 1) // self.bt)  # blocks holding tokens it can take (not its last one)
        j_mem, seq = 0, -1
        for j in range(min(len(hashes), usable), 0, -1):
            where = self._by_hash.get(hashes[j - 1])
            if where is not None:
                j_mem, seq = j, where[0]
                break
        mine = -1
        if j_mem:
            mine = model.fork(seq)
            model.truncate(mine, j_mem * self.bt)
            self._chains.move_to_end(seq)
        limit = min(len(hashes), usable)
        j = j_mem
        if self.ram is not None and j < limit:
            j, mine = self._restore(model, hashes, j, limit, mine, from_store=False)
        if self.store is not None and j < limit:
            j, mine = self._restore(model, hashes, j, limit, mine, from_store=True)
        if j > j_mem:  # keep the restored chain in the pool too
            self._keep(model, mine, hashes[:j])
        if j == 0:
            self.misses += 1
            return None
        n = min(j * self.bt, len(prompt) - 1)
        if n < j * self.bt and self.exact_blocks:
            # A codec block cut back to part of itself would be decoded to go on writing: the request's
            # KV would differ from a cold run's. Recompute that block's tokens instead.
            j -= 1
            n = j * self.bt
            if j == 0:
                model.free(mine)
                self.misses += 1
                return None
        if model.sequence_length(mine) > n:
            model.truncate(mine, n)  # part of the last block: copied on write when the request goes on
        self.hits += 1
        self.hit_tokens += n
        return mine, n

    def _restore(self, model: Model, hashes: list[bytes], j: int, limit: int, seq: int, *,
                 from_store: bool) -> tuple[int, int]:
        """Blocks j.. of the chain from the RAM tier or the persistent store, appended to ``seq``
        (created if -1); returns the chain's new length and the sequence (-1 if there is none).

        Pipelined: up to ``prefetch`` blocks are fetched and checked (blob read, CRC, zstd) on reader
        threads while the engine thread appends the one before, so fetching block i+1 overlaps
        decoding block i into the pool."""
        if from_store:
            assert self.store is not None
            present, read = self.store.stored(hashes[j:limit]), self.store.read
        else:
            assert self.ram is not None
            present, read = {h for h in hashes[j:limit] if h in self.ram}, self.ram.read
        run: list[bytes] = []
        for h in hashes[j:limit]:
            if h not in present:
                break
            run.append(h)
        if not run:
            return j, seq
        if self._readers is None:
            self._readers = ThreadPoolExecutor(max_workers=max(1, self.prefetch), thread_name_prefix="nlm-kv-reader")
        pending: collections.deque[Future[bytes | None]] = collections.deque()
        ahead = iter(run)
        for h in itertools.islice(ahead, max(1, self.prefetch)):
            pending.append(self._readers.submit(read, h))
        if seq < 0:
            seq = model.new_sequence()
        start = j
        try:
            while pending:
                raw = pending.popleft().result()
                nxt = next(ahead, None)
                if nxt is not None:
                    pending.append(self._readers.submit(read, nxt))
                if raw is None or not self._append(model, seq, raw):
                    break
                if from_store:
                    self._persisted.add(hashes[j])
                j += 1
        finally:
            for f in pending:
                f.cancel()
        if from_store:
            self.restored_blocks += j - start
            if j > start and self.writer is not None:  # used: LRU retention keeps them longer
                used = hashes[start:j]
                store = self.store
                assert store is not None
                self.writer.submit_job(lambda: store.touch(used))
        else:
            self.ram_blocks += j - start
        if j == 0:
            model.free(seq)
            return 0, -1
        return j, seq

    def _append(self, model: Model, seq: int, raw: bytes) -> bool:
        """One restored block into the pool, making room by eviction; False when there is none."""
        while True:
            try:
                model.append_block(seq, raw)
                return True
            except KVCacheFull:
                if self.evict(model, 1) == 0:
                    return False

    def _keep(self, model: Model, seq: int, hashes: list[bytes]) -> None:
        mine = model.fork(seq)
        chain = _Chain(mine, list(hashes))
        self._chains[mine] = chain
        for i, h in enumerate(hashes, 1):
            self._by_hash[h] = (mine, i)
        while len(self._chains) > self.max_chains:
            self._drop(next(iter(self._chains)))

    def on_event(self, model: Model, event: Any) -> None:
        """Keeps the full blocks of a finished prompt (``prefilled``) and of a sequence about to go
        (``freed``: its prompt and generated tokens, so a conversation's next turn finds its answer too)."""
        if event.kind not in ("prefilled", "freed"):
            return
        hashes = block_hashes(event.tokens, self.bt, self.root)
        if not hashes:
            return
        self._write_through(model, event.seq, hashes)
        if all(h in self._by_hash for h in hashes):
            self._chains.move_to_end(self._by_hash[hashes[-1]][0])
            return
        seq = model.fork(event.seq)
        model.truncate(seq, len(hashes) * self.bt)
        # chains this one extends (a prompt's, when its answer arrives) hold nothing it does not
        superseded = {w[0] for h in hashes if (w := self._by_hash.get(h)) is not None}
        for old in superseded:
            c = self._chains[old]
            if c.hashes == hashes[:len(c.hashes)]:
                self._drop(old)
        self._chains[seq] = _Chain(seq, hashes)
        for j, h in enumerate(hashes, 1):
            self._by_hash[h] = (seq, j)  # the newest chain holding a prefix answers for it
        while len(self._chains) > self.max_chains:
            self._drop(next(iter(self._chains)))

    def _write_through(self, model: Model, seq: int, hashes: list[bytes]) -> None:
        """Blocks not yet stored go to the writer, behind the request: their bytes now, the store later."""
        if self.writer is None:
            return
        for i, h in enumerate(hashes):
            if h not in self._persisted:
                self.writer.submit(h, hashes[i - 1] if i else None, model.export_block(seq, i))
                self._persisted.add(h)

    def reclaimable_blocks(self) -> int:
        """Distinct blocks the index holds (about what evicting everything frees: blocks a running
        request shares stay)."""
        return len(self._by_hash)

    def evict(self, model: Model, blocks: int) -> int:
        """Give back about ``blocks`` blocks: the least recently used chain loses its tail blocks first.
        Returns how many blocks went back to the pool."""
        freed = 0
        while freed < blocks and self._chains:
            seq, chain = next(iter(self._chains.items()))
            before = model.kv_free_blocks
            if self.ram is not None and chain.hashes[-1] not in self.ram:  # the next tier down keeps it
                self.ram.put(chain.hashes[-1], model.export_block(seq, len(chain.hashes) - 1))
            h = chain.hashes.pop()
            if self._by_hash.get(h, (None, 0))[0] == seq:
                del self._by_hash[h]
            if chain.hashes:
                model.truncate(seq, len(chain.hashes) * self.bt)
            else:
                self._drop(seq)
            freed += model.kv_free_blocks - before
        return freed

    def clear(self) -> None:
        """Give every kept block back to the pool, finish the pending writes and apply the stores'
        retention policy (the engine calls this when it closes)."""
        for seq in list(self._chains):
            self._drop(seq)
        if self.writer is not None and self.store is not None:
            self.writer.submit_job(self.store.apply_retention)
            self.writer.flush()

    def flush(self) -> None:
        """Return once every block computed so far is in the persistent store."""
        if self.writer is not None:
            self.writer.flush()

    def _drop(self, seq: int) -> None:
        chain = self._chains.pop(seq)
        for h in chain.hashes:
            if self._by_hash.get(h, (None, 0))[0] == seq:
                del self._by_hash[h]
        self.model.free(seq)

    def sequences(self) -> list[int]:
        """The index's own sequences (each holds one kept chain's blocks)."""
        return list(self._chains)

    def __len__(self) -> int:
        return len(self._chains)
