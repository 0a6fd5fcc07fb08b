"""Every kernel tier (generic scalar, AVX2, AVX-512) against the references, on odd sizes.

Quantized formats are multiplied against activations quantized to Q8 blocks, so
the comparison is against two references:
  * exact arithmetic on the same quantized activations, x_hat = q * d: only float
    summation order differs (tolerance KERNEL_REL_TOL of sum |w| |x_hat|);
  * the float activations x: the difference is bounded by the rounding of x,
    |x - x_hat| <= d / 2 per element, so |dot - w.x| <= sum |w_i| d_i / 2 (+ the above).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import GGML_QUANT_SIZES, dequantize

from nlm_native import cpu_features
from nlm_native._core import kernels
from quant_data import ALL_TYPES, random_rows

TIERS = [t for t in ("generic", "avx2", "avx512") if t in kernels.tiers()]
ALL_TIERS = ("generic", "avx2", "avx512")
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
ODD = (1, 2, 3, 5, 7, 15, 17, 31, 33, 63, 127, 129)
ODD_FLOAT = (1, 2, 3, 5, 7, 15, 17, 31, 33, 63, 127, 129, 255, 1023)
KERNEL_REL_TOL = 2e-6  # float32 summation-order error, relative to sum |w| |x|


def tier_param(tier: str) -> pytest.param:
    return pytest.param(tier, id=tier, marks=pytest.mark.skipif(tier not in TIERS, reason=f"CPU lacks {tier}"))


def sizes(qtype: QT) -> tuple[int, ...]:
    if qtype in FLOAT_TYPES:
        return ODD_FLOAT
    block = GGML_QUANT_SIZES[qtype][0]
    return tuple(block * n for n in (ODD if block == 32 else (1, 2, 3, 5)))


def q8_dequant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    qs, d, _, _, _ = kernels.quantize_q8(x)
    d_el = np.repeat(d.astype(np.float64), 32)
    return qs.astype(np.float64) * d_el, d_el


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_vec_dot(tier: str, qtype: QT) -> None:
    rng = np.random.default_rng(int(qtype))
    for n in sizes(qtype):
        raw = random_rows(qtype, 1, n, n).reshape(-1)
        w = dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float64)
        x = rng.standard_normal(n).astype(np.float32)
        got = kernels.vec_dot(int(qtype), raw, x, tier)
        if qtype in FLOAT_TYPES:
            want, scale, bound = float(w @ x), float(np.abs(w) @ np.abs(x)), 0.0
        else:
            x_hat, d_el = q8_dequant(x)
            want_hat = float(w @ x_hat)
            scale = float(np.abs(w) @ np.abs(x_hat))
            assert abs(got - want_hat) <= KERNEL_REL_TOL * scale + 1e-30, (n, got, want_hat)
            want, bound = float(w @ x), float(np.abs(w) @ d_el) / 2
        assert abs(got - want) <= bound + KERNEL_REL_TOL * scale + 1e-30, (n, got, want, bound)


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_equals_rowwise_vec_dot(tier: str, qtype: QT) -> None:
    block = GGML_QUANT_SIZES[qtype][0]
    cols = 3 * max(block, 32)
    rng = np.random.default_rng(3)
    for rows in (1, 5, 17, 33):
        raw = random_rows(qtype, rows, cols, rows)
        for m in (1, 3, 7):
            x = rng.standard_normal((m, cols)).astype(np.float32)
            got = kernels.matmul(int(qtype), raw.reshape(-1), rows, cols, x, 2, tier)
            want = np.array([[kernels.vec_dot(int(qtype), raw[r], x[i], tier) for r in range(rows)] for i in range(m)])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max() + 1e-30))


def test_simd_tiers_agree_with_generic_on_large_rows() -> None:
    """Long rows (many units, both loop bodies and tails) agree across tiers to rounding."""
    rng = np.random.default_rng(9)
    for qtype in ALL_TYPES:
        n = 4864 if qtype not in FLOAT_TYPES else 4863
        if GGML_QUANT_SIZES[qtype][0] == 256:
            n = 256 * 19
        raw = random_rows(qtype, 1, n, 4).reshape(-1)
        x = rng.standard_normal(n).astype(np.float32)
        w = dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float64)
        scale = float(np.abs(w) @ np.abs(x))
        base = kernels.vec_dot(int(qtype), raw, x, "generic")
        for tier in TIERS[1:]:
            assert abs(kernels.vec_dot(int(qtype), raw, x, tier) - base) <= 1e-5 * scale, (qtype.name, tier)


def test_q8_activation_quantization() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(32 * 9) * np.exp(rng.uniform(-5, 5, 32 * 9))).astype(np.float32)
    x[32:64] = 0.0  # an all-zero block
    qs, d, s, d_lane, sum_lane = kernels.quantize_q8(x)
    assert qs.min() >= -127 and qs.max() <= 127
    d_el = np.repeat(d, 32)
    assert np.all(np.abs(x - qs * d_el) <= d_el / 2 * (1 + 1e-6))
    np.testing.assert_array_equal(sum_lane, qs.reshape(-1, 4).astype(np.int32).sum(axis=1))
    np.testing.assert_array_equal(d_lane, np.repeat(d, 8))
    np.testing.assert_allclose(s, d * qs.reshape(-1, 32).sum(axis=1), rtol=1e-6)
    assert d[1] == 0.0 and np.all(qs[32:64] == 0)


def test_cpu_features_report() -> None:
    f = cpu_features()
    assert f["kernels"] in f["kernel_tiers"] and f["kernel_tiers"][0] == "generic"
    assert ("avx512" in f["kernel_tiers"]) == (f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512vnni"])
    assert isinstance(f["amx_usable"], bool)
