"""Choosing a stop string that spans a token boundary of a given generation."""

from __future__ import annotations

from nlm_native import LLM


def split_stop(llm: LLM, token_ids: list[int], text: str, width: int) -> tuple[str, int]:
    """A stop string of ``width`` characters from each of two adjacent tokens, first found at its cut."""
    for i in range(len(token_ids) - 1):
        left, right = llm.detokenize(token_ids[:i + 1]), llm.detokenize(token_ids[:i + 2])
        if "\ufffd" in right or not right.startswith(left) or len(right) - len(left) < width or len(left) < width:
            continue
        stop = left[-width:] + right[len(left):len(left) + width]
        if text.find(stop) == len(left) - width:
            return stop, len(left) - width
    raise AssertionError("no token pair to build a split stop sequence from")
