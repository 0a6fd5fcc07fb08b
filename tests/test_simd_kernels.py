"""Every kernel tier (generic scalar, AVX2, AVX-VNNI, AVX-512) against the references, on odd sizes.

Quantized formats are multiplied against activations quantized to Q8 blocks, so
the comparison is against two references:
  * exact arithmetic on the same quantized activations, x_hat = q * d: only float
    summation order differs (tolerance KERNEL_REL_TOL of sum |w| |x_hat|);
  * the float activations x: |dot - w.x| <= sum |w_i| |x_i - x_hat_i| (+ the above).
Activations are quantized as llama.cpp does it (Q8_0 for 32-blocks, Q8_K for k-quants).

And every SIMD tier against generic, bit for bit: all tiers follow one order of float
operations (quant/kernels.h), so their results are identical, not merely close.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import GGML_QUANT_SIZES, dequantize

from nlm_native import cpu_features
from nlm_native._core import kernels

from quant_data import ALL_TYPES, F16_FIELDS, random_rows

ALL_TIERS = ("generic", "avx2", "avxvnni", "avx512", "amx")
TIERS = [t for t in ALL_TIERS if t in kernels.tiers()]
PACKED_TIERS = ("avx2", "avxvnni", "avx512", "amx")
GROUP_ROWS = {"avx2": 8, "avxvnni": 8, "avx512": 16, "amx": 16}
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
        assert same_bits(got, kernels.vec_dot(int(qtype), raw, x, "generic")), (n, got)


def same_bits(a: float | np.ndarray, b: float | np.ndarray) -> bool:
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def describe(got: np.ndarray, want: np.ndarray) -> str:
    bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
    if bad.size == 0:
        return "equal"
    i = tuple(bad[0])
    return (f"{len(bad)} of {got.size} differ; first at {i}: {got[i]!r} vs {want[i]!r}, "
            f"max |diff| {np.abs(got - want).max():.3g}")


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
            want = np.array([[kernels.vec_dot(int(qtype), raw[r], x[i], tier) for r in range(rows)] for i in range(m)],
                            dtype=np.float32)
            assert same_bits(got, want), describe(got, want)  # batch-invariant: a row's result is the row's alone


def test_simd_tiers_agree_with_generic_on_large_rows() -> None:
    """Long rows (many units, both loop bodies and tails) give generic's bits on every tier."""
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
        assert abs(base - float(w @ x)) <= 2e-2 * scale, qtype.name
        for tier in TIERS[1:]:
            assert same_bits(kernels.vec_dot(int(qtype), raw, x, tier), base), (qtype.name, tier)


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
    avx512 = f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512dq"] and f["avx512vnni"]
    assert ("avx512" in f["kernel_tiers"]) == avx512
    assert ("avxvnni" in f["kernel_tiers"]) == (f["avxvnni"] and f["avx2"])
    # AMX only where the OS grants the tile state (and the start-up self-test passed)
    assert "amx" not in f["kernel_tiers"] or (avx512 and f["amx_usable"] and f["amx_int8"])
    assert f["kernels"] == f["kernel_tiers"][-1] or "NLM_KERNELS" in os.environ


PACKABLE = tuple(t for t in ALL_TYPES if t not in FLOAT_TYPES)


@pytest.mark.parametrize("tier", [tier_param(t) for t in PACKED_TIERS])
@pytest.mark.parametrize("qtype", PACKABLE, ids=lambda t: t.name)
def test_packed_matmul_bit_identical_to_generic(tier: str, qtype: QT) -> None:
    """Repacked weights (8- or 16-row groups) give the generic tier's results bit for bit: row-group
    tails, odd unit counts, one activation row (decode) and more than a token block (prefill)."""
    block = GGML_QUANT_SIZES[qtype][0]
    rng = np.random.default_rng(4)
    g = GROUP_ROWS[tier]
    for rows in (1, g - 1, g, g + 1, 2 * g + 3, 40):
        cols = block * (1 if block == 256 else 7) * (2 if rows == g + 1 else 1)
        raw = random_rows(qtype, rows, cols, rows)
        packed = kernels.pack(int(qtype), raw.reshape(-1), rows, cols, tier)
        assert (packed.rows, packed.cols, packed.group_rows, packed.tier) == (rows, cols, g, tier)
        for m in (1, 2, 3, 9, 31, 32, 33, 70):
            x = rng.standard_normal((m, cols)).astype(np.float32)
            want = kernels.matmul(int(qtype), raw.reshape(-1), rows, cols, x, 1, "generic")
            for n_threads in (1, 2, 3):
                got = packed.matmul(x, n_threads)
                assert same_bits(got, want), f"rows {rows} cols {cols} m {m} threads {n_threads}: {describe(got, want)}"


@pytest.mark.parametrize("tier", [tier_param(t) for t in PACKED_TIERS])
def test_packed_extreme_codes(tier: str) -> None:
    """Every code at its extreme (largest magnitudes of both signs) against activations at +-127:
    the integer sums where the 16-bit partial sums of vpmaddubsw come closest to saturating."""
    rng = np.random.default_rng(8)
    for qtype in PACKABLE:
        block, size = GGML_QUANT_SIZES[qtype]
        rows, cols = 9, 2 * max(block, 64)
        raw = random_rows(qtype, rows, cols, 1)
        n_blocks = rows * cols // block
        blocks = raw.reshape(n_blocks, size)
        scale_bytes = {o + j for o in F16_FIELDS[qtype] for j in (0, 1)}
        if qtype in (QT.Q4_K, QT.Q5_K):
            scale_bytes |= set(range(4, 16))  # the packed 6-bit scales and mins
        if qtype == QT.Q6_K:
            scale_bytes |= set(range(192, 208))  # int8 scales
        quant_bytes = [i for i in range(size) if i not in scale_bytes]
        for fill in (0x00, 0xFF, 0x80, 0x7F):
            b = blocks.copy()
            b[:, quant_bytes] = fill
            x = np.where(rng.random((5, cols)) < 0.5, -1.0, 1.0).astype(np.float32)  # quantizes to +-127
            want = kernels.matmul(int(qtype), b.reshape(-1), rows, cols, x, 1, "generic")
            got = kernels.pack(int(qtype), b.reshape(-1), rows, cols, tier).matmul(x, 2)
            assert same_bits(got, want), f"{qtype.name} fill {fill:#x}: {describe(got, want)}"


def test_pack_rejects_float_formats() -> None:
    raw = random_rows(QT.F16, 2, 64, 0)
    if "avx2" not in TIERS:
        pytest.skip("no packed tier")
    with pytest.raises(ValueError, match="no packed form"):
        kernels.pack(int(QT.F16), raw.reshape(-1), 2, 64, "avx2")
    with pytest.raises(ValueError, match="has no packed kernel"):
        kernels.pack(int(QT.Q8_0), random_rows(QT.Q8_0, 2, 64, 0).reshape(-1), 2, 64, "generic")


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
def test_float_dots_bit_identical_across_tiers(tier: str) -> None:
    rng = np.random.default_rng(10)
    for qtype in FLOAT_TYPES:
        for n in ODD_FLOAT + (4096, 4099):
            raw = random_rows(qtype, 1, n, n).reshape(-1)
            x = rng.standard_normal(n).astype(np.float32)
            assert same_bits(kernels.vec_dot(int(qtype), raw, x, tier), kernels.vec_dot(int(qtype), raw, x, "generic"))


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
def test_attention_kernels(tier: str) -> None:
    """scores = scale * q k^T and out + p v, against float64 and bit for bit against generic,
    for head dims with and without a tail of 8 and key counts around the 8-key step."""
    rng = np.random.default_rng(11)
    for d in (64, 128, 8, 3, 13, 72):
        for n in (1, 7, 8, 9, 17, 32):
            for nh in (1, 7):
                q = rng.standard_normal((nh, d)).astype(np.float32)
                k = rng.standard_normal((n, d)).astype(np.float32)
                s = kernels.attn_scores(q, k, 0.125, tier)
                want = 0.125 * (q.astype(np.float64) @ k.astype(np.float64).T)
                bound = 1e-6 * 0.125 * (np.abs(q.astype(np.float64)) @ np.abs(k.astype(np.float64)).T) + 1e-30
                assert np.all(np.abs(s - want) <= bound * 8), (d, n, nh)
                assert same_bits(s, kernels.attn_scores(q, k, 0.125, "generic")), (d, n, nh)
                p = rng.random((nh, n)).astype(np.float32)
                v = rng.standard_normal((n, d)).astype(np.float32)
                out0 = rng.standard_normal((nh, d)).astype(np.float32)
                o = kernels.attn_values(p, v, out0, tier)
                want_o = out0 + p.astype(np.float64) @ v.astype(np.float64)
                assert np.allclose(o, want_o, rtol=1e-5, atol=1e-5 * n), (d, n, nh)
                assert same_bits(o, kernels.attn_values(p, v, out0, "generic")), (d, n, nh)


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
def test_softmax_kernel(tier: str) -> None:
    """exp(x - max) within 1e-6 of float64 and its sum, bit for bit against generic; NaN passed over in
    the max and kept in its own output; -inf (a masked score) gives 0."""
    rng = np.random.default_rng(14)
    for n in (1, 7, 8, 9, 31, 64, 4097):
        x = (rng.standard_normal(n) * 20).astype(np.float32)
        x[rng.random(n) < 0.1] = -np.inf
        x[0] = 3.0
        e, s = kernels.softmax(x, tier)
        want = np.exp((x - x.max()).astype(np.float64))  # of the float32 difference, as the kernel sees it
        np.testing.assert_allclose(e, want, rtol=1e-6, atol=1e-30)  # below e^-87 the kernel clamps
        assert abs(s - want.sum()) <= 1e-5 * want.sum()
        e0, s0 = kernels.softmax(x, "generic")
        assert same_bits(e, e0) and same_bits(s, s0), n
    x = np.array([1.0, np.nan, 2.0] + [0.5] * 13, np.float32)
    e, s = kernels.softmax(x, tier)
    assert np.isnan(e[1]) and e[2] == 1.0 and np.isnan(s)


@pytest.mark.parametrize("tier", [tier_param(t) for t in ALL_TIERS])
def test_f16_conversions_match_numpy(tier: str) -> None:
    rng = np.random.default_rng(12)
    bits = rng.integers(0, 1 << 32, size=20011, dtype=np.uint64).astype(np.uint32)
    vals = bits.view(np.float32)
    vals = np.concatenate([vals[np.isfinite(vals)], (vals[np.isfinite(vals)] * 1e-32).astype(np.float32),
                           np.array([0.0, -0.0, 65504.0, 65520.0, 2.0**-24, 2.0**-25, 6e-8], np.float32)])
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).view(np.uint16)
    got = kernels.f32_to_f16(vals, tier)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:5]
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    halves = halves[np.isfinite(halves.view(np.float16))]
    assert same_bits(kernels.f16_to_f32(halves, tier), halves.view(np.float16).astype(np.float32))


@pytest.mark.parametrize("mode", ["q8_0", "q8_K"])
def test_q8_non_finite_and_tiny_blocks(mode: str) -> None:
    """A span with a NaN or an infinity quantizes to codes 0 and a NaN scale (its products are NaN,
    as float products would be); values too small for a finite 1/scale quantize to 0; the rest as usual."""
    span = 32 if mode == "q8_0" else 256
    rng = np.random.default_rng(13)
    x = rng.standard_normal(4 * span).astype(np.float32)
    x[3] = np.nan
    x[span + 5] = np.inf
    x[2 * span:3 * span] = np.float32(1e-40) * rng.standard_normal(span).astype(np.float32)
    qs, d, s, d_lane, sum_lane = kernels.quantize_q8(x, mode)
    per = span // 32
    for b in (0, 1):
        assert np.all(qs[b * span:(b + 1) * span] == 0) and np.all(np.isnan(d[b * per:(b + 1) * per]))
        assert np.all(np.isnan(s[b * per:(b + 1) * per])) and np.all(sum_lane[b * span // 4:(b + 1) * span // 4] == 0)
    assert np.all(qs[2 * span:3 * span] == 0) and np.all(d[2 * per:3 * per] == 0)
    ok, _, _, _, _ = kernels.quantize_q8(x[3 * span:], mode)
    assert np.array_equal(qs[3 * span:], ok) and np.abs(ok).max() == 127
    # through a matmul: the rows of x with a NaN give NaN, the others are untouched
    raw = random_rows(QT.Q8_0 if mode == "q8_0" else QT.Q4_K, 3, 256, 0)
    qt = QT.Q8_0 if mode == "q8_0" else QT.Q4_K
    xs = rng.standard_normal((2, 256)).astype(np.float32)
    xs[0, 7] = np.nan
    for tier in TIERS:
        y = kernels.matmul(int(qt), raw.reshape(-1), 3, 256, xs, 1, tier)
        assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1])), tier
