"""Weight-format kernels against gguf-py's numpy dequantization (the independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import GGML_QUANT_SIZES, dequantize

from nlm_native._core import kernels

from quant_data import ALL_TYPES, random_rows

ODD_BLOCK_COUNTS = (1, 2, 3, 5, 7, 15, 17, 31, 33, 63, 127, 129)


def describe_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    i = int(bad[0])
    return f"{bad.size} of {got.size} differ; first at {i}: got {got[i]!r}, want {want[i]!r}"


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_bit_identical_to_gguf_py(qtype: QT) -> None:
    block, _ = GGML_QUANT_SIZES[qtype]
    total = 0
    for seed, n_blocks in enumerate(ODD_BLOCK_COUNTS):
        n = n_blocks * block if block > 1 else n_blocks * 32 + 1
        raw = random_rows(qtype, 1, n, seed)
        want = dequantize(raw, qtype).reshape(-1).astype(np.float32)
        got = kernels.dequantize_ref(int(qtype), raw.reshape(-1), n)
        assert got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), describe_mismatch(got, want)
        total += n
    assert total > 0


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_vec_dot_ref_matches_float64_dot_of_dequantized(qtype: QT) -> None:
    block, _ = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(7)
    for n_blocks in (1, 3, 17):
        n = n_blocks * max(block, 32)
        raw = random_rows(qtype, 1, n, n_blocks)
        w = dequantize(raw, qtype).reshape(-1).astype(np.float64)
        x = rng.standard_normal(n).astype(np.float32)
        want = float(np.dot(w, x.astype(np.float64)))
        got = kernels.vec_dot_ref(int(qtype), raw.reshape(-1), x)
        # The reference accumulates in double and rounds once to float32.
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6 * float(np.abs(w).dot(np.abs(x)))), (got, want)


# The engine's matmul accumulates in float32 with vectorised partial sums; the
# tolerance is relative to sum |w||x| (the scale of the rounding error), 2e-6 per
# unit, about 16 float32 ulps.
MATMUL_REL_TOL = 2e-6


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 3, 5, 16, 17, 33])
def test_matmul_matches_vec_dot_ref(qtype: QT, rows: int) -> None:
    block, _ = GGML_QUANT_SIZES[qtype]
    cols = 3 * max(block, 32)
    raw = random_rows(qtype, rows, cols, rows)
    w = dequantize(raw, qtype).reshape(rows, cols).astype(np.float64)
    rng = np.random.default_rng(rows)
    for m in (1, 2, 5):
        x = rng.standard_normal((m, cols)).astype(np.float32)
        for n_threads in (1, 2):
            got = kernels.matmul(int(qtype), raw.reshape(-1), rows, cols, x, n_threads, "ref")
            assert got.shape == (m, rows)
            want = np.array([[kernels.vec_dot_ref(int(qtype), raw[r], x[i]) for r in range(rows)] for i in range(m)])
            scale = np.abs(x.astype(np.float64)) @ np.abs(w).T
            err = np.abs(got - want) / np.maximum(scale, 1e-30)
            where = np.unravel_index(err.argmax(), err.shape)
            assert err.max() <= MATMUL_REL_TOL, f"max scaled error {err.max():.3g} at {where}"


def test_kernel_entry_points_reject_bad_sizes() -> None:
    raw = random_rows(QT.Q4_K, 1, 256, 0).reshape(-1)
    with pytest.raises(ValueError, match="multiple of the Q4_K block size"):
        kernels.dequantize_ref(int(QT.Q4_K), raw, 100)
    with pytest.raises(ValueError, match="expected 288 bytes"):
        kernels.dequantize_ref(int(QT.Q4_K), raw, 512)
    with pytest.raises(ValueError, match="unsupported ggml type id"):
        kernels.dequantize_ref(99, raw, 256)
