"""Every kernel tier (generic scalar, AVX2, AVX-512) against the references, on odd sizes.

Quantized formats are multiplied against activations quantized to Q8 blocks, so
the comparison is against two references:
  * exact arithmetic on the same quantized activations, x_hat = q * d: only float
    summation order differs (tolerance KERNEL_REL_TOL of sum |w| |x_hat|);
  * the float activations x: |dot - w.x| <= sum |w_i| |x_i - x_hat_i| (+ the above).
Activations are quantized as llama.cpp does it (Q8_0 for 32-blocks, Q8_K for k-quants).
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


def q8_mode(qtype: QT) -> str:
    return "q8_K" if GGML_QUANT_SIZES[qtype][0] == 256 else "q8_0"


def q8_dequant(x: np.ndarray, mode: str) -> np.ndarray:
    qs, d, _, _, _ = kernels.quantize_q8(x, mode)
    return qs.astype(np.float64) * np.repeat(d.astype(np.float64), 32)


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
            x_hat = q8_dequant(x, q8_mode(qtype))
            want_hat = float(w @ x_hat)
            scale = float(np.abs(w) @ np.abs(x_hat))
            assert abs(got - want_hat) <= KERNEL_REL_TOL * scale + 1e-30, (n, got, want_hat)
            want, bound = float(w @ x), float(np.abs(w) @ np.abs(x - x_hat))
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


@pytest.mark.parametrize("mode", ["q8_0", "q8_K"])
def test_q8_activation_quantization(mode: str) -> None:
    rng = np.random.default_rng(1)
    n = 256 * 3
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))).astype(np.float32)
    x[256:512] = 0.0  # an all-zero span
    qs, d, s, d_lane, sum_lane = kernels.quantize_q8(x, mode)
    assert qs.min() >= -127 and qs.max() <= 127
    span = 32 if mode == "q8_0" else 256
    for b0 in range(0, n, span):
        xs, q = x[b0:b0 + span].astype(np.float64), qs[b0:b0 + span]
        ds = d[b0 // 32]
        assert np.all(d[b0 // 32:(b0 + span) // 32] == ds)  # one scale per span
        amax = np.abs(xs).max()
        if amax == 0:
            assert ds == 0 and np.all(q == 0)
            continue
        assert np.abs(q).max() == 127  # the largest value maps to +-127
        if mode == "q8_0":  # scale = max|x| / 127 rounded to f16, codes from the unrounded scale
            assert ds == np.float32(np.float16(np.float32(amax) / np.float32(127)))
            np.testing.assert_array_equal(q, np.rint(xs * np.float32(127 / np.float32(amax))).astype(np.int8))
        else:
            assert abs(ds * q[np.abs(xs).argmax()] - xs[np.abs(xs).argmax()]) <= 1e-6 * amax
        assert np.all(np.abs(xs - q * ds) <= abs(ds) * 0.57)
    np.testing.assert_array_equal(sum_lane, qs.reshape(-1, 4).astype(np.int32).sum(axis=1))
    np.testing.assert_array_equal(d_lane, np.repeat(d, 8))
    np.testing.assert_allclose(s, d * qs.reshape(-1, 32).sum(axis=1), rtol=1e-6)


def test_f32_to_f16_rounding_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 1 << 32, size=20000, dtype=np.uint64).astype(np.uint32)
    vals = bits.view(np.float32)
    vals = vals[np.isfinite(vals)]
    extra = np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14,
                      1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1e-8, 6e-5], dtype=np.float32)
    for v in np.concatenate([vals, extra, -extra, (vals * 1e-30).astype(np.float32)]):
        with np.errstate(over="ignore"):
            want = int(np.float32(v).astype(np.float16).view(np.uint16))
        assert kernels.f32_to_f16_bits(float(v)) == want, (v, want)


def test_cpu_features_report() -> None:
    f = cpu_features()
    assert f["kernels"] in f["kernel_tiers"] and f["kernel_tiers"][0] == "generic"
    assert ("avx512" in f["kernel_tiers"]) == (f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512vnni"])
    assert isinstance(f["amx_usable"], bool)


PACKABLE = tuple(t for t in ALL_TYPES if t not in FLOAT_TYPES)


@pytest.mark.skipif("avx512" not in TIERS, reason="CPU lacks the AVX-512 VNNI tier")
@pytest.mark.parametrize("qtype", PACKABLE, ids=lambda t: t.name)
def test_packed_matmul_equals_generic(qtype: QT) -> None:
    """Repacked weights (16-row groups) give the generic tier's results: same integers, same scales."""
    block = GGML_QUANT_SIZES[qtype][0]
    rng = np.random.default_rng(4)
    for rows in (1, 15, 16, 17, 40):
        cols = block * (1 if block == 256 else 7) * (2 if rows == 17 else 1)
        raw = random_rows(qtype, rows, cols, rows)
        packed = kernels.pack(int(qtype), raw.reshape(-1), rows, cols)
        assert (packed.rows, packed.cols) == (rows, cols)
        for m in (1, 3, 4, 9):  # the kernel takes activation rows 4 at a time
            x = rng.standard_normal((m, cols)).astype(np.float32)
            want = kernels.matmul(int(qtype), raw.reshape(-1), rows, cols, x, 1, "generic")
            for n_threads in (1, 2):
                got = packed.matmul(x, n_threads)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max() + 1e-30))


def test_pack_rejects_float_formats() -> None:
    raw = random_rows(QT.F16, 2, 64, 0)
    with pytest.raises(ValueError, match="no packed form"):
        kernels.pack(int(QT.F16), raw.reshape(-1), 2, 64)
