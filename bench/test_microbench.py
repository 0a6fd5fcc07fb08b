"""Microbenchmarks (pytest-benchmark): run with ``python -m pytest bench/test_microbench.py``.

* matrix-vector throughput per weight format and kernel tier, reported as GB/s of
  weights streamed (``extra_info["GB/s"]``), for a 4864 x 896 matrix (k-quants
  896 x 4864: their rows must hold whole 256-blocks), plus every tier's repacked path;
* dequantization throughput per format (reference dequantizer);
* one decode step of the default model at short and long context (the difference
  is the attention over the paged cache), when the model is in the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import GGML_QUANT_SIZES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nlm_native import Batch, Model  # noqa: E402
from nlm_native._core import kernels  # noqa: E402
from nlm_native.core.fetch import default_model_path  # noqa: E402

from quant_data import ALL_TYPES, random_rows  # noqa: E402

TIERS = kernels.tiers()


def shape(qtype: QT) -> tuple[int, int]:
    return (896, 4864) if GGML_QUANT_SIZES[qtype][0] == 256 else (4864, 896)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matvec(benchmark, qtype: QT, tier: str) -> None:
    rows, cols = shape(qtype)
    raw = random_rows(qtype, rows, cols, 0)
    flat = raw.reshape(-1)
    x = np.random.default_rng(0).standard_normal((1, cols)).astype(np.float32)
    benchmark(kernels.matmul, int(qtype), flat, rows, cols, x, 2, tier)
    benchmark.extra_info["GB/s"] = raw.nbytes / benchmark.stats["median"] / 1e9


PACKED_TIERS = [t for t in ("avx2", "avxvnni", "avx512") if t in TIERS]


@pytest.mark.parametrize("tier", PACKED_TIERS)
@pytest.mark.parametrize("m", [1, 64, 512])
@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t not in (QT.F32, QT.F16, QT.BF16)], ids=lambda t: t.name)
def test_matmul_packed(benchmark, qtype: QT, m: int, tier: str) -> None:
    rows, cols = shape(qtype)
    raw = random_rows(qtype, rows, cols, 0)
    packed = kernels.pack(int(qtype), raw.reshape(-1), rows, cols, tier)
    x = np.random.default_rng(0).standard_normal((m, cols)).astype(np.float32)
    benchmark(packed.matmul, x, 2)
    benchmark.extra_info["GB/s"] = packed.n_bytes / benchmark.stats["median"] / 1e9
    benchmark.extra_info["GMAC/s"] = rows * cols * m / benchmark.stats["median"] / 1e9


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_ref(benchmark, qtype: QT) -> None:
    n = 256 * 1024
    raw = random_rows(qtype, 1, n, 0).reshape(-1)
    benchmark(kernels.dequantize_ref, int(qtype), raw, n)
    benchmark.extra_info["Melem/s"] = n / benchmark.stats["median"] / 1e6


@pytest.fixture(scope="module")
def real_model() -> Model:
    path = default_model_path(download=False)
    if not path.exists():
        pytest.skip("default model not cached (run `nlm pull`)")
    return Model.load(path, n_threads=2, n_ctx=2048)


@pytest.mark.parametrize("ctx", [16, 1024])
def test_decode_step(benchmark, real_model: Model, ctx: int) -> None:
    seq = real_model.new_sequence()
    b = Batch()
    b.add_sequence([100 + i % 1000 for i in range(ctx)], 0, seq, logits="none")
    real_model.forward(b)

    def step() -> None:
        s = Batch()
        s.add(42, ctx, seq, logits=True)
        real_model.forward(s)
        real_model.truncate(seq, ctx)

    benchmark(step)
    real_model.free(seq)
