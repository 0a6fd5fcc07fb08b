"""The int8 / int4 KV codecs on the real model: perplexity on llama.cpp's oracle text next to the f16 pool,
the KL divergence of next-token distributions, top-1 agreement, and bytes per token.

The bench (bench/bench_kv_codec.py) runs every window; this test runs the first WINDOWS of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nlm_native import Batch, Model

from real_model import oracle, real_model_path

pytestmark = pytest.mark.real_model

WINDOWS = 2
MAX_PPL_RISE = {"int8": 0.002, "int4": 0.02}  # the bar: +0.2% and +2% over f16
MAX_KL = {"int8": 0.005, "int4": 0.02}        # nats; measured 0.0010 and 0.0052 over all 11 windows
MIN_TOP1 = {"int8": 0.96, "int4": 0.94}        # measured 0.980 and 0.963


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def window_logprobs(model: Model, window: list[int]) -> np.ndarray:
    """Log-probabilities at positions ctx/2 .. ctx-2 of one window (as the perplexity test scores)."""
    ctx = len(window)
    seq = model.new_sequence()
    try:
        b = Batch()
        for i, t in enumerate(window):
            b.add(t, i, seq, logits=ctx // 2 <= i <= ctx - 2)
        return log_softmax(model.forward(b)).astype(np.float32)
    finally:
        model.free(seq)


@pytest.fixture(scope="module")
def windows() -> list[list[int]]:
    ppl = oracle()["perplexity"]
    ctx, ids = ppl["ctx"], ppl["token_ids"]
    return [ids[w * ctx:(w + 1) * ctx] for w in range(WINDOWS)]


def scored(model: Model, windows: list[list[int]]) -> tuple[float, list[np.ndarray]]:
    nll, count, lps = 0.0, 0, []
    for window in windows:
        lp = window_logprobs(model, window)
        ctx = len(window)
        targets = np.asarray(window[ctx // 2 + 1:])
        nll -= float(lp[np.arange(len(targets)), targets].astype(np.float64).sum())
        count += len(targets)
        lps.append(lp)
    return math.exp(nll / count), lps


@pytest.fixture(scope="module")
def f16(windows: list[list[int]]) -> tuple[float, list[np.ndarray]]:
    return scored(Model.load(real_model_path(), n_threads=2, n_ctx=512), windows)


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_codec_perplexity_kl_and_top1_next_to_f16(codec: str, windows: list[list[int]], f16: Any) -> None:
    model = Model.load(real_model_path(), n_threads=2, n_ctx=512, kv_codec=codec)
    ppl, lps = scored(model, windows)
    base_ppl, base = f16
    kl = float(np.mean([(np.exp(a.astype(np.float64)) * (a.astype(np.float64) - b)).sum(-1).mean()
                        for a, b in zip(base, lps, strict=True)]))
    top1 = float(np.mean([(a.argmax(-1) == b.argmax(-1)).mean() for a, b in zip(base, lps, strict=True)]))
    mem16 = Model.load(real_model_path(), n_ctx=32).memory()["kv_bytes_per_token"]
    per_token = model.memory()["kv_bytes_per_token"]
    rise = ppl / base_ppl - 1
    print(f"{codec}: perplexity {ppl:.4f} vs f16 {base_ppl:.4f} ({rise:+.3%}), KL {kl:.5f}, top-1 {top1:.4f}, "
          f"{per_token} bytes/token vs {mem16}")
    assert rise <= MAX_PPL_RISE[codec]
    assert kl <= MAX_KL[codec]
    assert top1 >= MIN_TOP1[codec]
    # 24 layers x 2 kv heads x 64 channels, blocks of 32 tokens
    codes = 64 if codec == "int8" else 32
    assert per_token == 24 * 2 * ((codes + 4 * 64 // 32) + (codes + 4 * 2)) and per_token < mem16 / 1.7
