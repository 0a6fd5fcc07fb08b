"""The core's sampling kernels (``csrc/sample``), wrapped: one token per row of a step's logits,
the distribution a row is sampled from, and log-probabilities of raw rows."""

from __future__ import annotations

import numpy as np

from .. import _core


def sample_rows(logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray,
                min_p: np.ndarray, u: np.ndarray, *, n_threads: int = 1) -> np.ndarray:
    """int32 token per row of processed logits ``(R, V)`` (``-inf``: masked), per the rules of
    ``csrc/sample/sample.h``; ``u`` holds each row's uniform random number. The GIL is released."""
    return _core.sampling.sample_rows(logits, temperature, top_k, top_p, min_p, u, n_threads)


def distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ids, probabilities summing to 1) one processed row is sampled from, in sampling order."""
    return _core.sampling.distribution(logits, temperature, top_k, top_p, min_p)


def logprob_rows(logits: np.ndarray, tokens: np.ndarray | None, k: int, *, n_threads: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per raw row ``(R, V)``: the log-probability of ``tokens[r]``, the ``k`` most likely ids and their
    log-probabilities (most likely first, ties to the lower id), and the row's log-sum-exp."""
    return _core.sampling.logprob_rows(logits, tokens, k, n_threads)


def apply_bitmask(row: np.ndarray, bits: np.ndarray) -> None:
    """``row[i] = -inf`` where bit ``i`` of ``bits`` (int32 words, least significant bit first) is 0, in place;
    ``row`` is a C-contiguous float32 vector (anything else would be copied, and the mask lost)."""
    if row.dtype != np.float32 or row.ndim != 1 or not row.flags.c_contiguous or not row.flags.writeable:
        raise ValueError("apply_bitmask: row must be a writeable, C-contiguous float32 vector")
    _core.sampling.apply_bitmask(row, np.ascontiguousarray(bits, dtype=np.int32))
