"""The seam for a KV cache behind the engine: a prefix lookup when a request is admitted, and events
when a prompt's blocks are complete and when a request lets its blocks go.

The engine works without one. A cache (prefix reuse by block hash, tiers in RAM and in stores) plugs
in as a :class:`PrefixCache`; the engine only ever calls these methods, on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ..core import Model


@dataclass(frozen=True)
class BlockEvent:
    """``prefilled``: ``seq`` holds the KV of ``tokens`` (a whole prompt) and nothing has written past it
    yet (fork it to keep the blocks); ``freed``: one of the request's sequences is about to be freed,
    holding the KV of ``tokens`` (its prompt and the tokens it generated and fed back)."""

    kind: Literal["prefilled", "freed"]
    request_id: str
    seq: int
    tokens: tuple[int, ...]


class PrefixCache(Protocol):
    def lookup(self, model: Model, prompt: list[int]) -> tuple[int, int] | None:
        """A new sequence (the request owns it) that already holds the KV of ``prompt[:n]``, and ``n``
        (at most ``len(prompt) - 1``: the last prompt token is computed for its logits); None on a miss."""
        ...

    def on_event(self, model: Model, event: BlockEvent) -> None: ...


class EvictingCache(PrefixCache, Protocol):
    """A cache whose kept blocks count as room the engine can have back (``PrefixIndex`` is one)."""

    def reclaimable_blocks(self) -> int:
        """At most how many blocks :meth:`evict` could free."""
        ...

    def evict(self, model: Model, blocks: int) -> int:
        """Free about ``blocks`` blocks; how many went back to the pool."""
        ...
