"""Greedy decoding over token ids: the low-level loop (sampling and text come later)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..core import Batch, Model
from ..text.tokenizer import metadata_end_ids


def end_token_ids(model: Model) -> set[int]:
    """Token ids that end generation according to the file's tokenizer metadata."""
    return metadata_end_ids(model.metadata)


def greedy_tokens(model: Model, prompt: Sequence[int], max_tokens: int, *, stop_ids: set[int] | None = None
                  ) -> Iterator[int]:
    """Yield up to ``max_tokens`` argmax tokens after ``prompt``, ending after a stop token.

    The prompt is prefilled in one batch, then one token per step reuses the KV cache.
    """
    if not prompt:
        raise ValueError("greedy_tokens: the prompt is empty")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    stops = end_token_ids(model) if stop_ids is None else stop_ids
    seq = model.new_sequence()
    try:
        batch = Batch()
        batch.add_sequence(list(prompt), 0, seq, logits="last")
        pos = len(prompt)
        for _ in range(max_tokens):
            token = int(np.argmax(model.forward(batch)[-1]))
            yield token
            if token in stops:
                return
            batch = Batch()
            batch.add(token, pos, seq, logits=True)
            pos += 1
    finally:
        model.free(seq)
