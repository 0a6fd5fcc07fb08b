"""A probe on Model.forward: the size of every batch a model runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


class BatchSizes:
    """Wraps ``llm.model.forward`` (for the test's duration) to record ``len(batch)`` of every call."""

    def __init__(self, llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = llm.model.forward

        def forward(batch: Any, **kw: Any) -> np.ndarray:
            self.sizes.append(len(batch))
            return real(batch, **kw)

        monkeypatch.setattr(llm.model, "forward", forward)
