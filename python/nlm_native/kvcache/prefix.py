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
from dataclasses import dataclass, field
from typing import Any

from ..core import KVCacheFull, Model
from .hashing import block_hashes, cache_fingerprint
from .store import BlockStore, WriteBehind


@dataclass
class _Chain:
    seq: int  # the index's own sequence: it holds blocks[0 : len(hashes)]
    hashes: list[bytes] = field(default_factory=list)


class PrefixIndex:
    """A :class:`~nlm_native.engine.PrefixCache` that reuses pool blocks across requests."""

    def __init__(self, model: Model, *, max_chains: int = 1024, store: BlockStore | None = None) -> None:
        self.model = model
        self.store = store
        self.writer = WriteBehind(store) if store is not None else None
        self._persisted: set[bytes] = set()  # hashes this process has written (or found) in the store
        self.restored_blocks = 0
        self.bt = model.block_tokens
        self.root = cache_fingerprint(model)
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
        j = j_mem
        if self.store is not None and j < min(len(hashes), usable):
            j, mine = self._restore(model, hashes, j, min(len(hashes), usable), mine)
        if j == 0:
            self.misses += 1
            return None
        n = min(j * self.bt, len(prompt) - 1)
        if n < j * self.bt:
            model.truncate(mine, n)  # part of the last block: copied on write when the request goes on
        self.hits += 1
        self.hit_tokens += n
        return mine, n

    def _restore(self, model: Model, hashes: list[bytes], j: int, limit: int, seq: int) -> tuple[int, int]:
        """Blocks j.. of the chain from the persistent store, appended to ``seq`` (created if -1)."""
        assert self.store is not None
        stored = self.store.stored(hashes[j:limit])
        if hashes[j] not in stored:
            return j, seq
        if seq < 0:
            seq = model.new_sequence()
        start = j
        while j < limit and hashes[j] in stored:
            raw = self.store.read(hashes[j])
            if raw is None:
                break
            while True:
                try:
                    model.append_block(seq, raw)
                    break
                except KVCacheFull:
                    if self.evict(model, 1) == 0:
                        raw = None
                        break
            if raw is None:
                break
            self._persisted.add(hashes[j])
            j += 1
        self.restored_blocks += j - start
        if j == 0:
            model.free(seq)
            return 0, -1
        if j > start:  # keep the restored chain in memory too
            self._keep(model, seq, hashes[:j])
        return j, seq

    def _keep(self, model: Model, seq: int, hashes: list[bytes]) -> None:
        mine = model.fork(seq)
        chain = _Chain(mine, list(hashes))
        self._chains[mine] = chain
        for i, h in enumerate(hashes, 1):
            self._by_hash[h] = (mine, i)
        while len(self._chains) > self.max_chains:
            self._drop(next(iter(self._chains)))

    def on_event(self, model: Model, event: Any) -> None:
        if event.kind != "prefilled":
            return
        hashes = block_hashes(event.tokens, self.bt, self.root)
        if not hashes or all(h in self._by_hash for h in hashes):
            if hashes:
                self._chains.move_to_end(self._by_hash[hashes[-1]][0])
            if self.writer is not None and any(h not in self._persisted for h in hashes):
                for i, h in enumerate(hashes):
                    if h not in self._persisted:
                        self.writer.submit(h, hashes[i - 1] if i else None, model.export_block(event.seq, i))
                        self._persisted.add(h)
            return
        if self.writer is not None:  # write-through, behind the request: the bytes now, the store later
            for i, h in enumerate(hashes):
                if h not in self._persisted:
                    self.writer.submit(h, hashes[i - 1] if i else None, model.export_block(event.seq, i))
                    self._persisted.add(h)
        seq = model.fork(event.seq)
        model.truncate(seq, len(hashes) * self.bt)
        chain = _Chain(seq, hashes)
        self._chains[seq] = chain
        for j, h in enumerate(hashes, 1):
            self._by_hash[h] = (seq, j)  # the newest chain holding a prefix answers for it
        while len(self._chains) > self.max_chains:
            self._drop(next(iter(self._chains)))

    def reclaimable_blocks(self) -> int:
        """Blocks the index holds (an upper bound on what evicting everything frees)."""
        return sum(len(c.hashes) for c in self._chains.values())

    def evict(self, model: Model, blocks: int) -> int:
        """Give back about ``blocks`` blocks: the least recently used chain loses its tail blocks first.
        Returns how many blocks went back to the pool."""
        freed = 0
        while freed < blocks and self._chains:
            seq, chain = next(iter(self._chains.items()))
            before = model.kv_free_blocks
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
        """Give every kept block back to the pool, and finish the pending writes."""
        for seq in list(self._chains):
            self._drop(seq)
        if self.writer is not None:
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

    def __len__(self) -> int:
        return len(self._chains)
