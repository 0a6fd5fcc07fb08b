"""The unit of one forward step: entries from many sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Batch:
    """Flat list of ``(token, position, sequence)`` entries for one forward step.

    Entries of one sequence are appended to its KV cache in the order they are
    added, after what the sequence already holds; each entry attends to its
    sequence's cached tokens up to and including itself. ``logits`` marks the
    entries whose next-token logits are returned, in entry order.
    """

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[int] = field(default_factory=list)
    logits: list[bool] = field(default_factory=list)

    def add(self, token: int, position: int, seq_id: int, logits: bool = False) -> None:
        self.tokens.append(int(token))
        self.positions.append(int(position))
        self.seq_ids.append(int(seq_id))
        self.logits.append(bool(logits))

    def add_sequence(self, tokens: list[int], start: int, seq_id: int, logits: str = "last") -> None:
        """Append ``tokens`` at positions ``start, start+1, ...`` of ``seq_id``.

        ``logits`` is ``"last"`` (only the final entry), ``"all"`` or ``"none"``.
        """
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        n = len(tokens)
        for i, t in enumerate(tokens):
            want = logits == "all" or (logits == "last" and i == n - 1)
            self.add(t, start + i, seq_id, want)

    def __len__(self) -> int:
        return len(self.tokens)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, positions, seq_ids, logit_rows) as int32 arrays for the core."""
        rows = np.flatnonzero(np.asarray(self.logits, dtype=bool)).astype(np.int32)
        return (
            _int32(self.tokens, "token"),
            _int32(self.positions, "position"),
            _int32(self.seq_ids, "sequence id"),
            rows,
        )


def _int32(values: list[int], what: str) -> np.ndarray:
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    for v in values:
        if not lo <= v <= hi:
            raise ValueError(f"{what} {v} does not fit in 32 bits")
    return np.asarray(values, dtype=np.int32)
