"""The int8 / int4 KV codecs' kernels: every tier writes the bytes of a NumPy model of the format, and
decoding stays within the stated bound."""

from __future__ import annotations

import kv_codec_ref as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nlm_native import cpu_features
from nlm_native.core import kvcodec

TIERS = ["generic"] + [t for t in cpu_features()["kernel_tiers"] if t not in ("generic", "amx")]
CASES = [(c, p) for c in kvcodec.CODECS for p in "kv"]


def blocks(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 40))
    d = draw(st.sampled_from([32, 64, 128]))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0, 1500.0]))  # with the outlier, within f16 as the pool's rows are
    x = draw(hnp.arrays(np.float32, (n, d), elements=st.floats(-1.0, 1.0, width=32)))
    x = x * np.float32(scale)
    if draw(st.booleans()):  # an outlier channel, as this model family's keys have
        x[:, draw(st.integers(0, d - 1))] *= np.float32(40.0)
    return x.astype(np.float32)


block_arrays = st.composite(blocks)()


@settings(max_examples=60, deadline=None)
@given(x=block_arrays)
def test_every_tier_writes_the_reference_bytes(x: np.ndarray) -> None:
    n, d = x.shape
    for codec, part in CASES:
        want = ref.encode(x, codec, part)
        assert len(want) == kvcodec.encoded_bytes(n, d, codec, part)
        for tier in TIERS:
            got = kvcodec.encode(x[None], codec, part, tier)
            assert got == want, (codec, part, tier)
            np.testing.assert_array_equal(kvcodec.decode(got, 1, n, d, codec, part, tier)[0],
                                          ref.decode(want, n, d, codec, part))


@settings(max_examples=60, deadline=None)
@given(x=block_arrays)
def test_decode_of_encode_within_half_a_step(x: np.ndarray) -> None:
    n, d = x.shape
    for codec, part in CASES:
        data = kvcodec.encode(x[None], codec, part)
        y = kvcodec.decode(data, 1, n, d, codec, part)[0]
        step = ref.scales(data, n, d, part)
        # half a step, plus the float32 rounding of (x - m) * inv, the clamp and c * s + m
        bound = 0.5 * step * (1 + 2e-6) + 4 * np.spacing(np.abs(x).max() + step.max() * 16)
        err = np.abs(y - x)
        assert (err <= bound).all(), (codec, part, float((err - bound).max()))
        # and the step itself is the group's range over the codes, rounded up to f16
        qmax = 255 if codec == "int8" else 15
        if part == "k":
            lo = x.min(axis=0)
            slack = np.spacing(np.abs(lo).astype(np.float16)).astype(np.float32)  # the minimum rounded down to f16
            assert (step[0] <= (x.max(axis=0) - lo + slack) / qmax * (1 + 2 ** -9) + 2 ** -24).all()


def test_edge_groups() -> None:
    d = 64
    const = np.full((8, d), 3.25, np.float32)
    negzero = np.full((8, d), -0.0, np.float32)
    big = np.linspace(-60000, 60000, 8 * d, dtype=np.float32).reshape(8, d)
    tiny = np.linspace(-1e-6, 1e-6, 8 * d, dtype=np.float32).reshape(8, d)
    for x in (const, negzero, big, tiny):
        for codec, part in CASES:
            want = ref.encode(x, codec, part)
            for tier in TIERS:
                assert kvcodec.encode(x[None], codec, part, tier) == want, (codec, part, tier)
            y = kvcodec.decode(want, 1, 8, d, codec, part)[0]
            assert np.isfinite(y).all()
    for codec, part in CASES:  # a constant group decodes exactly; -0 is stored as +0
        np.testing.assert_array_equal(kvcodec.decode(kvcodec.encode(const[None], codec, part), 1, 8, d, codec, part)[0],
                                      const)
        zeros = np.zeros((1, 8, d), np.float32)
        assert kvcodec.encode(negzero[None], codec, part) == kvcodec.encode(zeros, codec, part)


def test_many_blocks_at_once_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 32, 64)).astype(np.float32)
    for codec, part in CASES:
        whole = kvcodec.encode(x, codec, part)
        assert whole == b"".join(kvcodec.encode(x[i:i + 1], codec, part) for i in range(5))
        np.testing.assert_array_equal(kvcodec.decode(whole, 5, 32, 64, codec, part)[2],
                                      kvcodec.decode(kvcodec.encode(x[2:3], codec, part), 1, 32, 64, codec, part)[0])


def test_bad_arguments_are_named() -> None:
    x = np.zeros((1, 4, 48), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        kvcodec.encode(x, "int8", "k")
    with pytest.raises(ValueError, match="part must be"):
        kvcodec.encode(np.zeros((1, 4, 32), np.float32), "int8", "q")
    with pytest.raises(ValueError, match="'int8' and 'int4'"):
        kvcodec.encode(np.zeros((1, 4, 32), np.float32), "f16", "k")
    with pytest.raises(ValueError, match="kv_codec must be"):
        kvcodec.encode(np.zeros((1, 4, 32), np.float32), "int3", "k")
    with pytest.raises(ValueError, match="are 20 bytes, got 67"):
        kvcodec.decode(b"\0" * 67, 1, 1, 32, "int4", "v")
    with pytest.raises(ValueError, match="unknown or not supported"):
        kvcodec.encode(np.zeros((1, 4, 32), np.float32), "int8", "k", tier="sse9")
