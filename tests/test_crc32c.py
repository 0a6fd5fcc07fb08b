"""CRC32C: the hardware and portable paths against RFC 3720's vectors, the crc32c PyPI package and
each other; extending a CRC over any split equals the CRC of the whole."""

from __future__ import annotations

import crc32c as pypi_crc32c
import numpy as np
import pytest

import nlm_native
from nlm_native import _core

IMPLS = {"portable": _core._crc32c_portable}
if hasattr(_core, "_crc32c_sse42") and nlm_native.cpu_features()["sse42"]:
    IMPLS["sse4.2"] = _core._crc32c_sse42
_f = nlm_native.cpu_features()
if hasattr(_core, "_crc32c_avx512") and _f["sse42"] and _f["avx512f"] and _f["vpclmulqdq"]:
    IMPLS["avx512"] = _core._crc32c_avx512
IMPL_IDS = sorted(IMPLS)

# RFC 3720 appendix B.4 (iSCSI), and the usual check value
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (bytes.fromhex("01c00000" "00000000" "00000000" "00000000" "14000000" "00000400" "00000014" "00000018"
                   "28000000" "00000000" "02000000" "00000000"), 0xD9963A56),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_rfc3720_vectors(impl: str) -> None:
    for data, want in VECTORS:
        assert IMPLS[impl](data, 0) == want, (impl, data[:8], hex(IMPLS[impl](data, 0)), hex(want))


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_against_the_crc32c_package_on_odd_sizes_and_alignments(impl: str) -> None:
    rng = np.random.default_rng(1)
    buf = rng.integers(0, 256, 3 * 3 * 8192 + 4096, dtype=np.uint8).tobytes()
    sizes = [0, 1, 2, 3, 5, 7, 8, 15, 17, 31, 33, 63, 127, 129, 255, 256, 257, 319, 511, 512, 513, 575, 576, 767,
             768, 769, 1023, 1024, 1087, 24575, 24576, 24577, 49153, len(buf) - 7]
    for offset in (0, 1, 3, 7):
        for n in sizes:
            data = buf[offset:offset + n]
            assert IMPLS[impl](data, 0) == pypi_crc32c.crc32c(data), (impl, offset, n)


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_the_crc_of_a_split_buffer_is_the_crc_of_the_whole(impl: str) -> None:
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    whole = IMPLS[impl](small, 0)
    for k in range(len(small) + 1):  # every split point
        assert IMPLS[impl](small[k:], IMPLS[impl](small[:k], 0)) == whole
    big = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    whole = IMPLS[impl](big, 0)
    for k in list(range(0, 100_000, 4093)) + [511, 512, 513, 24575, 24576, 24577, 99_487, 99_488, 99_999]:
        assert IMPLS[impl](big[k:], IMPLS[impl](big[:k], 0)) == whole


def test_the_public_function() -> None:
    data = np.arange(1 << 20, dtype=np.uint32)  # any contiguous buffer: its bytes
    assert nlm_native.crc32c(data) == pypi_crc32c.crc32c(data.tobytes())
    assert nlm_native.crc32c(memoryview(b"456789"), nlm_native.crc32c(b"123")) == 0xE3069283
    with pytest.raises(ValueError, match="contiguous"):
        nlm_native.crc32c(np.zeros((8, 8), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="32-bit"):
        nlm_native.crc32c(b"x", -1)
    with pytest.raises(TypeError):
        nlm_native.crc32c("text is not bytes")  # type: ignore[arg-type]
    assert nlm_native.core.checksum.implementation() in IMPLS


def test_large_buffers_are_summed_in_parallel_spans_with_the_same_result() -> None:
    rng = np.random.default_rng(3)
    for n in (2 << 20, (5 << 20) + 12345, (8 << 20) + 1):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert nlm_native.crc32c(data) == pypi_crc32c.crc32c(data), n
        assert nlm_native.crc32c(data, 0xDEADBEEF) == _core._crc32c_portable(data, 0xDEADBEEF), n


def test_large_buffers_fold_as_four_streams_with_the_same_result() -> None:
    """From 4 MiB the AVX-512 path folds four quarters at once and joins them: every length class of the
    quarters and the tail, every alignment, against the portable path and the PyPI package."""
    if "avx512" not in IMPLS:
        pytest.skip("no AVX-512 VPCLMULQDQ on this CPU")
    rng = np.random.default_rng(7)
    big = rng.integers(0, 256, (16 << 20) + 4096, dtype=np.uint8).tobytes()
    for n in ((4 << 20) - 1, 4 << 20, (4 << 20) + 1, (4 << 20) + 1023, (4 << 20) + 1024, (9 << 20) + 777, 16 << 20):
        for off in (0, 1, 63):
            data = big[off:off + n]
            want = pypi_crc32c.crc32c(data)
            assert IMPLS["avx512"](data, 0) == want, (n, off)
            assert IMPLS["avx512"](data, 0x12345678) == _core._crc32c_portable(data, 0x12345678), (n, off)
