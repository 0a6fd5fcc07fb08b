"""Checks that requests gave their KV blocks back: everything not kept by the prefix cache is free."""

from __future__ import annotations

from nlm_native import LLM


def assert_pool_free(llm: LLM) -> None:
    """Only the prefix cache's own sequences remain, and dropping them frees every block (so nothing
    leaked: a block still held by a finished request would stay in use)."""
    cache = llm.prefix_cache
    kept = set(cache.sequences()) if cache is not None else set()
    assert set(llm.model.sequences()) == kept, "sequences other than the prefix cache's are alive"
    if cache is not None:
        cache.clear()
    assert llm.model.kv_free_blocks == llm.model.kv_blocks and llm.model.sequences() == []
