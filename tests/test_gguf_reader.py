"""Tests of the GGUF reader (``nlm_native.gguf.read``).

Files are written with gguf-py's ``GGUFWriter`` and checked against gguf-py's own
``GGUFReader``. Hostile files are made by patching a valid file at byte positions
found by walking its layout here (``walk``), so the tests follow the writer.
Everything that could crash the interpreter is also run in a subprocess, where a
segfault shows up as a non-zero exit status instead of killing pytest.
"""

import json
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

from nlm_native import GGUFError
from nlm_native.core.gguf import GGUFContents, read

# ---------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------

VT = GGUFValueType
QT = GGMLQuantizationType


def f32(x: float) -> float:
    """``x`` rounded to float32, as a FLOAT32 value reads back."""
    return float(np.float32(x))


# (key, value written, value type, array element type, value expected back)
MetaSpec = tuple[str, Any, GGUFValueType, GGUFValueType | None, Any]

METADATA: list[MetaSpec] = [
    ("test.u8", 200, VT.UINT8, None, 200),
    ("test.i8", -100, VT.INT8, None, -100),  # same length as test.u8: the duplicate-key case needs that
    ("test.u16", 60000, VT.UINT16, None, 60000),
    ("test.i16", -30000, VT.INT16, None, -30000),
    ("test.u32", 4_000_000_000, VT.UINT32, None, 4_000_000_000),
    ("test.i32", -2_000_000_000, VT.INT32, None, -2_000_000_000),
    ("test.u64", 2**64 - 1, VT.UINT64, None, 2**64 - 1),
    ("test.i64", -(2**63), VT.INT64, None, -(2**63)),
    ("test.f32", 3.14159, VT.FLOAT32, None, f32(3.14159)),
    ("test.f64", -2.718281828459045, VT.FLOAT64, None, -2.718281828459045),
    ("test.bool_true", True, VT.BOOL, None, True),
    ("test.bool_false", False, VT.BOOL, None, False),
    ("test.string", "héllo wörld ✓", VT.STRING, None, "héllo wörld ✓"),
    ("test.empty_string", "", VT.STRING, None, ""),
    ("test.arr.i32", [1, -2, 3, 2**31 - 1], VT.ARRAY, None, [1, -2, 3, 2**31 - 1]),
    ("test.arr.u8", [0, 1, 255], VT.ARRAY, VT.UINT8, [0, 1, 255]),
    ("test.arr.i16", [-32768, 32767], VT.ARRAY, VT.INT16, [-32768, 32767]),
    ("test.arr.u64", [0, 2**64 - 1], VT.ARRAY, VT.UINT64, [0, 2**64 - 1]),
    ("test.arr.i64", [-(2**63), 2**63 - 1], VT.ARRAY, VT.INT64, [-(2**63), 2**63 - 1]),
    ("test.arr.f32", [0.5, -1.25, 1e-3], VT.ARRAY, None, [0.5, -1.25, f32(1e-3)]),
    ("test.arr.f64", [0.1, -1e300], VT.ARRAY, VT.FLOAT64, [0.1, -1e300]),
    ("test.arr.bool", [True, False, True], VT.ARRAY, None, [True, False, True]),
    ("test.arr.str", ["a", "", "ünï", "x" * 100], VT.ARRAY, None, ["a", "", "ünï", "x" * 100]),
    ("test.arr.nested", [[1, 2], [3], [4, 5, 6]], VT.ARRAY, None, [[1, 2], [3], [4, 5, 6]]),
    ("test.arr.nested_str", [["x"], ["y", "z"]], VT.ARRAY, None, [["x"], ["y", "z"]]),
]

_rng = np.random.default_rng(0)
# (name, array written, raw dtype, ggml type id, ggml type name, GGUF shape). Names all have 7 characters.
TENSORS: list[tuple[str, np.ndarray, GGMLQuantizationType | None, int, str, tuple[int, ...]]] = [
    ("blk.f32", np.arange(24, dtype=np.float32).reshape(2, 3, 4), None, 0, "F32", (4, 3, 2)),
    ("blk.f16", _rng.standard_normal((5, 8)).astype(np.float16), None, 1, "F16", (8, 5)),
    ("blk.q80", quantize(_rng.standard_normal((3, 64)).astype(np.float32), QT.Q8_0), QT.Q8_0, 8, "Q8_0", (64, 3)),
    ("blk.vec", np.linspace(-1.0, 1.0, 7, dtype=np.float32), None, 0, "F32", (7,)),
    ("blk.f4d", _rng.standard_normal((2, 1, 3, 2)).astype(np.float32), None, 0, "F32", (2, 3, 1, 2)),
]


def write_gguf(
    path: Path,
    *,
    alignment: int | None = None,
    metadata: list[MetaSpec] | None = None,
    with_tensors: bool = True,
) -> Path:
    w = GGUFWriter(path, arch="test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype, sub_type, _ in METADATA if metadata is None else metadata:
        w.add_key_value(key, value, vtype, sub_type)
    if with_tensors:
        for name, array, raw_dtype, *_ in TENSORS:
            w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expected_metadata(alignment: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"general.architecture": "test"}
    if alignment is not None:
        out["general.alignment"] = alignment
    out.update({key: expected for key, _, _, _, expected in METADATA})
    return out


# ---------------------------------------------------------------------------
# A walker of the GGUF layout, to find the bytes to corrupt
# ---------------------------------------------------------------------------

VERSION_POS, N_TENSORS_POS, N_KV_POS = 4, 8, 16
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


@dataclass
class KVEntry:
    key: str
    pos: int  # the u64 key length
    type_pos: int  # the u32 value type
    vtype: int
    value_pos: int
    end: int
    elem_type_pos: int = -1  # ARRAY: the u32 element type
    length_pos: int = -1  # ARRAY: the u64 element count
    elem_pos: list[int] = field(default_factory=list)  # ARRAY: where each element starts


@dataclass
class TensorEntry:
    name: str
    pos: int  # the u64 name length
    n_dims_pos: int
    dim_pos: list[int]
    dims: list[int]
    type_pos: int
    type_id: int
    offset_pos: int
    offset: int  # relative to the data section


@dataclass
class Layout:
    version: int
    n_tensors: int
    n_kv: int
    kvs: dict[str, KVEntry]
    tensors: list[TensorEntry]
    directory_end: int

    def kv(self, key: str) -> KVEntry:
        return self.kvs[key]

    def tensor(self, name: str) -> TensorEntry:
        return next(t for t in self.tensors if t.name == name)


def u32_at(data: bytes, pos: int) -> int:
    return struct.unpack_from("<I", data, pos)[0]


def u64_at(data: bytes, pos: int) -> int:
    return struct.unpack_from("<Q", data, pos)[0]


def skip_value(data: bytes, pos: int, vtype: int) -> int:
    if vtype in SCALAR_SIZES:
        return pos + SCALAR_SIZES[vtype]
    if vtype == STRING:
        return pos + 8 + u64_at(data, pos)
    assert vtype == ARRAY, vtype
    elem_type, n = u32_at(data, pos), u64_at(data, pos + 4)
    pos += 12
    for _ in range(n):
        pos = skip_value(data, pos, elem_type)
    return pos


def walk(data: bytes) -> Layout:
    assert data[:4] == b"GGUF"
    version, n_tensors, n_kv = u32_at(data, VERSION_POS), u64_at(data, N_TENSORS_POS), u64_at(data, N_KV_POS)
    pos = 24
    kvs: dict[str, KVEntry] = {}
    for _ in range(n_kv):
        start, n = pos, u64_at(data, pos)
        key = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        vtype = u32_at(data, pos)
        entry = KVEntry(key, start, pos, vtype, pos + 4, -1)
        pos += 4
        if vtype == ARRAY:
            entry.elem_type_pos, entry.length_pos = pos, pos + 4
            elem_type, count = u32_at(data, pos), u64_at(data, pos + 4)
            pos += 12
            for _ in range(count):
                entry.elem_pos.append(pos)
                pos = skip_value(data, pos, elem_type)
        else:
            pos = skip_value(data, pos, vtype)
        entry.end = pos
        kvs[key] = entry
    tensors: list[TensorEntry] = []
    for _ in range(n_tensors):
        start, n = pos, u64_at(data, pos)
        name = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        n_dims_pos, n_dims = pos, u32_at(data, pos)
        pos += 4
        dim_pos = [pos + 8 * d for d in range(n_dims)]
        dims = [u64_at(data, p) for p in dim_pos]
        pos += 8 * n_dims
        type_pos, type_id = pos, u32_at(data, pos)
        offset_pos, offset = pos + 4, u64_at(data, pos + 4)
        pos += 12
        tensors.append(TensorEntry(name, start, n_dims_pos, dim_pos, dims, type_pos, type_id, offset_pos, offset))
    return Layout(version, n_tensors, n_kv, kvs, tensors, pos)


def put(data: bytes, pos: int, raw: bytes) -> bytes:
    assert 0 <= pos and pos + len(raw) <= len(data)
    return data[:pos] + raw + data[pos + len(raw) :]


def put_u32(data: bytes, pos: int, value: int) -> bytes:
    return put(data, pos, struct.pack("<I", value))


def put_u64(data: bytes, pos: int, value: int) -> bytes:
    return put(data, pos, struct.pack("<Q", value))


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@dataclass
class Base:
    path: Path
    data: bytes
    layout: Layout
    alignment: int


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Base]:
    """The valid files the hostile ones are made from: default alignment, and 64."""
    d = tmp_path_factory.mktemp("gguf_bases")
    out: dict[str, Base] = {}
    for name, alignment in (("plain", None), ("aligned", 64)):
        path = write_gguf(d / f"{name}.gguf", alignment=alignment)
        data = path.read_bytes()
        out[name] = Base(path, data, walk(data), alignment or 32)
    return out


@pytest.fixture(scope="module")
def plain(bases: dict[str, Base]) -> Base:
    return bases["plain"]


def check_invariants(c: GGUFContents) -> None:
    """What any successful read must guarantee about the tensor directory."""
    assert c.alignment > 0 and c.alignment & (c.alignment - 1) == 0
    assert c.directory_end <= c.data_offset and c.data_offset % c.alignment == 0
    assert c.data_offset - c.directory_end < c.alignment
    extents = []
    for t in c.tensors:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type_id)]
        assert 1 <= len(t.shape) <= 4 and all(n > 0 for n in t.shape)
        assert t.shape[0] % block == 0
        assert t.n_bytes == int(np.prod(t.shape, dtype=object)) // block * type_size
        assert t.offset % c.alignment == 0 and t.offset >= c.data_offset
        assert t.offset + t.n_bytes <= c.file_size
        extents.append((t.offset, t.offset + t.n_bytes))
    extents.sort()
    for (_, end), (start, _) in zip(extents, extents[1:], strict=False):
        assert end <= start


# ---------------------------------------------------------------------------
# 1. Round trip
# ---------------------------------------------------------------------------


def check_against_gguf_py(c: GGUFContents, path: Path) -> None:
    r = GGUFReader(path)
    assert [t.name for t in c.tensors] == [t.name for t in r.tensors]
    for ours, theirs in zip(c.tensors, r.tensors, strict=True):
        assert ours.type_id == int(theirs.tensor_type)
        assert ours.type == theirs.tensor_type.name
        assert ours.shape == tuple(int(n) for n in theirs.shape)
        assert ours.offset == theirs.data_offset
        assert ours.n_bytes == theirs.n_bytes
    assert c.data_offset == r.data_offset
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert list(c.metadata) == keys
    for key in keys:
        f = r.fields[key]
        if f.types[0] == VT.ARRAY and f.types[1] == VT.ARRAY:
            continue  # gguf-py flattens nested arrays
        assert c.metadata[key] == f.contents(), key


def test_round_trip(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf")
    c = read(path)  # a PathLike is accepted
    assert c.path == str(path)
    assert c.version == 3
    assert c.alignment == 32
    assert c.file_size == path.stat().st_size

    want = expected_metadata()
    assert c.metadata == want
    for key, value in want.items():  # bool is not int here, int is not float
        assert type(c.metadata[key]) is type(value), key

    assert [t.name for t in c.tensors] == [name for name, *_ in TENSORS]
    data = path.read_bytes()
    for t, (name, array, _, type_id, type_name, shape) in zip(c.tensors, TENSORS, strict=True):
        assert (t.name, t.type_id, t.type, t.shape) == (name, type_id, type_name, shape)
        assert t.shape == tuple(reversed(array.shape)) or array.dtype == np.uint8
        assert t.n_bytes == array.nbytes
        assert data[t.offset : t.offset + t.n_bytes] == array.tobytes(), name
    assert c.data_offset == c.tensors[0].offset == -(-c.directory_end // 32) * 32
    assert c.directory_end == walk(data).directory_end
    check_invariants(c)
    check_against_gguf_py(c, path)


def test_custom_alignment(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "aligned.gguf", alignment=64)
    c = read(path)
    assert c.alignment == 64
    assert c.metadata == expected_metadata(alignment=64)
    assert c.data_offset % 64 == 0
    assert all(t.offset % 64 == 0 for t in c.tensors)
    # Under the default 32 some of these offsets would differ: the alignment really was applied.
    assert any(t.offset % 64 != 0 for t in read(write_gguf(tmp_path / "a32.gguf")).tensors)
    check_invariants(c)
    check_against_gguf_py(c, path)


def test_alignment_one_is_allowed(tmp_path: Path) -> None:
    # general.alignment 1 is a power of two: the data section starts right after the directory.
    path = write_gguf(tmp_path / "a.gguf", alignment=64)
    data = path.read_bytes()
    data = put_u32(data, walk(data).kv("general.alignment").value_pos, 1)
    path.write_bytes(data)
    c = read(path)
    assert c.alignment == 1 and c.data_offset == c.directory_end
    check_invariants(c)


def test_metadata_only_file(tmp_path: Path) -> None:
    c = read(write_gguf(tmp_path / "meta.gguf", with_tensors=False))
    assert c.tensors == []
    assert c.metadata == expected_metadata()


def test_nested_arrays_up_to_depth_8(tmp_path: Path) -> None:
    def nest(depth: int) -> list[Any]:
        v: list[Any] = [7]
        for _ in range(depth - 1):
            v = [v]
        return v

    ok = write_gguf(tmp_path / "d8.gguf", metadata=[("deep", nest(8), VT.ARRAY, None, None)], with_tensors=False)
    assert read(ok).metadata["deep"] == nest(8)
    bad = write_gguf(tmp_path / "d9.gguf", metadata=[("deep", nest(9), VT.ARRAY, None, None)], with_tensors=False)
    with pytest.raises(GGUFError, match="nested deeper"):
        read(bad)


def test_non_utf8_key_survives_as_surrogates(plain: Base, tmp_path: Path) -> None:
    kv = plain.layout.kv("test.u8")
    path = tmp_path / "key.gguf"
    path.write_bytes(put(plain.data, kv.pos + 8 + len("test.u8") - 1, b"\xff"))
    c = read(path)
    assert c.metadata["test.u\udcff"] == 200


def test_version_2_reads(plain: Base, tmp_path: Path) -> None:
    path = tmp_path / "v2.gguf"
    path.write_bytes(put_u32(plain.data, VERSION_POS, 2))
    c = read(path)
    v3 = read(plain.path)
    assert c.version == 2
    assert c.metadata == v3.metadata
    assert c.tensors == v3.tensors


@pytest.mark.parametrize("version", [0, 1, 4, 0x03000000, 2**32 - 1])
def test_other_versions_are_rejected(plain: Base, tmp_path: Path, version: int) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(put_u32(plain.data, VERSION_POS, version))
    with pytest.raises(GGUFError, match=rf"version {version}\b"):
        read(path)


# ---------------------------------------------------------------------------
# 2. Hostile files
# ---------------------------------------------------------------------------

Mutator = Callable[[bytes, Layout], bytes]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutator
    match: str | None  # a regular expression the message must match
    base: str = "plain"


def _rename(data: bytes, pos: int, old: str, new: str) -> bytes:
    assert len(old) == len(new) and u64_at(data, pos) == len(old)
    return put(data, pos + 8, new.encode())


def _inner(lay: Layout, key: str, i: int) -> int:
    """Start of the i-th element (itself an array) of the nested array ``key``."""
    return lay.kv(key).elem_pos[i]


def _past_end(data: bytes, lay: Layout) -> bytes:
    t = lay.tensors[-1]
    return put_u64(data, t.offset_pos, t.offset + 32)


def _alignment_128(data: bytes, lay: Layout) -> bytes:
    assert any(t.offset % 128 for t in lay.tensors)
    return put_u32(data, lay.kv("general.alignment").value_pos, 128)


CASES: list[Case] = [
    Case("empty", lambda d, lay: b"", "bad magic"),
    Case("bad-magic", lambda d, lay: put(d, 0, b"GGUG"), "bad magic"),
    Case("lowercase-magic", lambda d, lay: put(d, 0, b"gguf"), "bad magic"),
    Case("magic-only", lambda d, lay: d[:4], "truncated"),
    # Counts.
    Case("n_tensors=2**63", lambda d, lay: put_u64(d, N_TENSORS_POS, 2**63), "tensor count"),
    Case("n_tensors=2**40", lambda d, lay: put_u64(d, N_TENSORS_POS, 2**40), "tensor count"),
    Case("n_tensors=2**64-1", lambda d, lay: put_u64(d, N_TENSORS_POS, 2**64 - 1), "tensor count"),
    Case("n_tensors+1", lambda d, lay: put_u64(d, N_TENSORS_POS, lay.n_tensors + 1), None),
    Case("n_kv=2**63", lambda d, lay: put_u64(d, N_KV_POS, 2**63), "metadata count"),
    Case("n_kv=2**40", lambda d, lay: put_u64(d, N_KV_POS, 2**40), "metadata count"),
    Case("n_kv=2**64-1", lambda d, lay: put_u64(d, N_KV_POS, 2**64 - 1), "metadata count"),
    Case("n_kv+1", lambda d, lay: put_u64(d, N_KV_POS, lay.n_kv + 1), None),
    # String lengths.
    Case("key-len=2**64-1", lambda d, lay: put_u64(d, lay.kv("general.architecture").pos, 2**64 - 1), "truncated"),
    Case("key-len=2**63", lambda d, lay: put_u64(d, lay.kv("test.u32").pos, 2**63), "truncated"),
    Case("str-len=2**64-1", lambda d, lay: put_u64(d, lay.kv("test.string").value_pos, 2**64 - 1), "truncated"),
    Case("str-len=file-size", lambda d, lay: put_u64(d, lay.kv("test.string").value_pos, len(d)), "truncated"),
    Case("str-elem-len=2**64-1", lambda d, lay: put_u64(d, lay.kv("test.arr.str").elem_pos[1], 2**64 - 1), "truncated"),
    Case("tensor-name-len=2**64-1", lambda d, lay: put_u64(d, lay.tensors[2].pos, 2**64 - 1), "truncated"),
    # Array lengths.
    Case("u8-array-len=2**64-1", lambda d, lay: put_u64(d, lay.kv("test.arr.u8").length_pos, 2**64 - 1), "not fit"),
    Case("u8-array-len=file-size", lambda d, lay: put_u64(d, lay.kv("test.arr.u8").length_pos, len(d)), "not fit"),
    Case("i32-array-len=2**62", lambda d, lay: put_u64(d, lay.kv("test.arr.i32").length_pos, 2**62), "not fit"),
    Case("u64-array-len=2**40", lambda d, lay: put_u64(d, lay.kv("test.arr.u64").length_pos, 2**40), "not fit"),
    Case("str-array-len=2**63", lambda d, lay: put_u64(d, lay.kv("test.arr.str").length_pos, 2**63), "not fit"),
    Case("nested-len=2**64-1", lambda d, lay: put_u64(d, lay.kv("test.arr.nested").length_pos, 2**64 - 1), "not fit"),
    Case(
        "inner-array-len=2**62",
        lambda d, lay: put_u64(d, _inner(lay, "test.arr.nested", 1) + 4, 2**62),
        "not fit",
    ),
    # Value types.
    Case("value-type=13", lambda d, lay: put_u32(d, lay.kv("test.u32").type_pos, 13), "unknown value type 13"),
    Case("value-type=2**32-1", lambda d, lay: put_u32(d, lay.kv("test.f64").type_pos, 2**32 - 1), "unknown value"),
    Case(
        "array-elem-type=13",
        lambda d, lay: put_u32(d, lay.kv("test.arr.i32").elem_type_pos, 13),
        "unknown array element type 13",
    ),
    Case(
        "inner-elem-type=99",
        lambda d, lay: put_u32(d, _inner(lay, "test.arr.nested", 0), 99),
        "unknown array element type 99",
    ),
    Case("bool=2", lambda d, lay: put(d, lay.kv("test.bool_true").value_pos, b"\x02"), "neither 0 nor 1"),
    Case("bool-elem=255", lambda d, lay: put(d, lay.kv("test.arr.bool").elem_pos[1], b"\xff"), "neither 0 nor 1"),
    Case(
        "duplicate-key",
        lambda d, lay: _rename(d, lay.kv("test.i8").pos, "test.i8", "test.u8"),
        "duplicate metadata key 'test.u8'",
    ),
    # Tensor directory.
    Case(
        "tensor-type=99",
        lambda d, lay: put_u32(d, lay.tensor("blk.f16").type_pos, 99),
        r"tensor 'blk\.f16'.*type 99",
    ),
    Case("tensor-type=2**31", lambda d, lay: put_u32(d, lay.tensor("blk.q80").type_pos, 2**31), r"'blk\.q80'"),
    Case("tensor-type=F64", lambda d, lay: put_u32(d, lay.tensor("blk.vec").type_pos, 28), r"'blk\.vec'.*28"),
    Case("n_dims=0", lambda d, lay: put_u32(d, lay.tensor("blk.f32").n_dims_pos, 0), r"'blk\.f32'.*0 dimensions"),
    Case("n_dims=5", lambda d, lay: put_u32(d, lay.tensor("blk.f4d").n_dims_pos, 5), r"'blk\.f4d'.*5 dimensions"),
    Case("n_dims=2**32-1", lambda d, lay: put_u32(d, lay.tensor("blk.vec").n_dims_pos, 2**32 - 1), "dimensions"),
    Case("dim=0", lambda d, lay: put_u64(d, lay.tensor("blk.f32").dim_pos[1], 0), r"'blk\.f32'.*dimension 1 = 0"),
    Case("dim0=0", lambda d, lay: put_u64(d, lay.tensor("blk.vec").dim_pos[0], 0), r"'blk\.vec'.*dimension 0 = 0"),
    Case(
        "dims-product-overflows",
        lambda d, lay: put_u64(
            put_u64(d, lay.tensor("blk.f16").dim_pos[0], 2**32), lay.tensor("blk.f16").dim_pos[1], 2**32
        ),
        r"'blk\.f16'.*overflow",
    ),
    Case("dim=2**63", lambda d, lay: put_u64(d, lay.tensor("blk.vec").dim_pos[0], 2**63), "overflow"),
    Case("dim=2**64-1", lambda d, lay: put_u64(d, lay.tensor("blk.f4d").dim_pos[3], 2**64 - 1), "overflow"),
    Case(
        "4d-product-overflows",
        lambda d, lay: put(d, lay.tensor("blk.f4d").dim_pos[0], struct.pack("<4Q", 2**16, 2**16, 2**16, 2**16)),
        "overflow",
    ),
    Case(
        "byte-size-overflows",
        lambda d, lay: put(d, lay.tensor("blk.f32").dim_pos[0], struct.pack("<3Q", 2**31, 2**30, 2)),
        r"'blk\.f32'.*byte size overflows",
    ),
    Case(
        "huge-tensor",
        lambda d, lay: put(d, lay.tensor("blk.f32").dim_pos[0], struct.pack("<3Q", 2**31, 2**29, 2)),
        r"'blk\.f32'.*past the end",
    ),
    Case("q8_0-row-not-blocks", lambda d, lay: put_u64(d, lay.tensor("blk.q80").dim_pos[0], 33), "block size"),
    Case(
        "duplicate-tensor-name",
        lambda d, lay: _rename(d, lay.tensor("blk.vec").pos, "blk.vec", "blk.f32"),
        "duplicate tensor name 'blk.f32'",
    ),
    Case(
        "offset-unaligned+1",
        lambda d, lay: put_u64(d, lay.tensor("blk.f16").offset_pos, lay.tensor("blk.f16").offset + 1),
        r"'blk\.f16'.*not a multiple of the alignment 32",
    ),
    Case(
        "offset-unaligned+16",
        lambda d, lay: put_u64(d, lay.tensor("blk.q80").offset_pos, lay.tensor("blk.q80").offset + 16),
        "not a multiple of the alignment",
    ),
    Case("offset-past-end", _past_end, r"'blk\.f4d'.*past the end"),
    Case("offset=2**63", lambda d, lay: put_u64(d, lay.tensor("blk.f32").offset_pos, 2**63), "past the end"),
    Case("offset=2**64-32", lambda d, lay: put_u64(d, lay.tensor("blk.vec").offset_pos, 2**64 - 32), "past the end"),
    Case(
        "offset=file-size",
        lambda d, lay: put_u64(d, lay.tensor("blk.vec").offset_pos, -(-len(d) // 32) * 32),
        "past the end",
    ),
    Case(
        "same-offset",
        lambda d, lay: put_u64(d, lay.tensor("blk.f16").offset_pos, lay.tensor("blk.f32").offset),
        r"'blk\.f32' and 'blk\.f16' overlap|'blk\.f16' and 'blk\.f32' overlap",
    ),
    Case(
        "partial-overlap",
        lambda d, lay: put_u64(d, lay.tensor("blk.f16").offset_pos, lay.tensor("blk.f32").offset + 64),
        r"'blk\.f32' and 'blk\.f16' overlap",
    ),
    Case(
        "overlap-out-of-order",
        lambda d, lay: put_u64(d, lay.tensor("blk.f32").offset_pos, lay.tensor("blk.f4d").offset),
        "overlap",
    ),
    # Names in messages: bytes that are not UTF-8 (or are NUL) must not turn GGUFError into UnicodeDecodeError.
    Case(
        "non-utf8-key-in-message",
        lambda d, lay: put(
            put(d, lay.kv("test.bool_true").pos + 13, b"\xc2"), lay.kv("test.bool_true").value_pos, b"\2"
        ),
        r"metadata 'test\.\\xC2ool_true': bool",
    ),
    Case(
        "nul-in-tensor-name-in-message",
        lambda d, lay: put(put_u32(d, lay.tensor("blk.f16").type_pos, 99), lay.tensor("blk.f16").pos + 11, b"\0"),
        r"tensor 'blk\\x00f16'.*99",
    ),
    Case(
        "non-utf8-tensor-names-overlap",
        lambda d, lay: put(
            put_u64(d, lay.tensor("blk.f16").offset_pos, lay.tensor("blk.f32").offset),
            lay.tensor("blk.f16").pos + 8,
            b"\xe2\x9c",
        ),
        r"'blk\.f32' and '\\xE2\\x9Ck\.f16' overlap",
    ),
    # general.alignment.
    Case(
        "alignment=0",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").value_pos, 0),
        "0 is not a power",
        "aligned",
    ),
    Case(
        "alignment=3",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").value_pos, 3),
        "3 is not a power",
        "aligned",
    ),
    Case(
        "alignment=48", lambda d, lay: put_u32(d, lay.kv("general.alignment").value_pos, 48), "not a power", "aligned"
    ),
    Case(
        "alignment=2**32-1",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").value_pos, 2**32 - 1),
        "not a power",
        "aligned",
    ),
    Case("alignment=128", _alignment_128, "not a multiple of the alignment 128", "aligned"),
    Case(
        "alignment=2**31",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").value_pos, 2**31),
        "alignment",
        "aligned",
    ),
    Case(
        "alignment-type=INT32",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").type_pos, int(VT.INT32)),
        "must be UINT32",
        "aligned",
    ),
    Case(
        "alignment-type=FLOAT32",
        lambda d, lay: put_u32(d, lay.kv("general.alignment").type_pos, int(VT.FLOAT32)),
        "must be UINT32",
        "aligned",
    ),
]


def hostile_bytes(case: Case, bases: dict[str, Base]) -> bytes:
    base = bases[case.base]
    return case.mutate(base.data, base.layout)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file(case: Case, bases: dict[str, Base], tmp_path: Path) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(hostile_bytes(case, bases))
    with pytest.raises(GGUFError, match=case.match) as e:
        read(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def truncation_points(base: Base) -> list[int]:
    """Every cut through the header and directory, and a spread of cuts through the tensor data."""
    c = read(base.path)
    data_end = max(t.offset + t.n_bytes for t in c.tensors)  # the file's last bytes are padding
    cuts = set(range(0, c.directory_end + 1))
    cuts.update(np.linspace(c.directory_end, data_end - 1, 25).astype(int).tolist())
    for t in c.tensors:
        cuts.update((t.offset, t.offset + 1, t.offset + t.n_bytes - 1))
    cuts.update((c.data_offset - 1, c.data_offset, data_end - 1))
    return sorted(n for n in cuts if n < data_end)


@pytest.mark.parametrize("name", ["plain", "aligned"])
def test_truncated_anywhere(bases: dict[str, Base], tmp_path: Path, name: str) -> None:
    base = bases[name]
    cuts = truncation_points(base)
    assert len(cuts) > base.layout.directory_end
    path = tmp_path / "cut.gguf"
    for n in cuts:
        path.write_bytes(base.data[:n])
        with pytest.raises(GGUFError) as e:
            read(path)
        assert str(path) in str(e.value), n


def test_huge_counts_in_a_large_sparse_file(tmp_path: Path) -> None:
    # In a big file a corrupt count can pass the "fits in the file" check while still being
    # far more entries than memory holds: it must still end in GGUFError (not MemoryError).
    base = write_gguf(tmp_path / "small.gguf", metadata=[], with_tensors=False).read_bytes()
    size = 64 << 30
    path = tmp_path / "sparse.gguf"
    for pos, count in ((N_KV_POS, (size - 24) // 13), (N_TENSORS_POS, (size - 24) // 24), (N_KV_POS, 2**28)):
        with open(path, "wb") as f:
            f.write(put_u64(base, pos, count))
            f.truncate(size)
        if path.stat().st_blocks * 512 > 1 << 20:
            pytest.skip("the file system does not keep sparse files sparse")
        with pytest.raises(GGUFError):
            read(path)
    path.unlink()


def test_array_element_budget(tmp_path: Path) -> None:
    # A real array of 2**24 + 1 bytes fits in the file, but is more than any model's
    # metadata holds: refused before it becomes millions of Python objects.
    n = (1 << 24) + 1
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = b"test.big"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", int(VT.ARRAY), int(VT.UINT8), n)
    path = tmp_path / "big-array.gguf"
    path.write_bytes(head + kv + bytes(n))
    with pytest.raises(GGUFError, match="more than any model needs"):
        read(path)
    # one element fewer than the budget reads
    n -= 1
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", int(VT.ARRAY), int(VT.UINT8), n)
    path.write_bytes(head + kv + bytes(n))
    assert len(read(path).metadata["test.big"]) == n


# ---------------------------------------------------------------------------
# 3. Paths that are not GGUF files
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(GGUFError, match="cannot open") as e:
        read(path)
    assert str(path) in str(e.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="not a regular file") as e:
        read(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_character_device() -> None:
    with pytest.raises(GGUFError, match="not a regular file"):
        read("/dev/null")


def test_path_with_nul_byte(plain: Base) -> None:
    # The file before the NUL exists and is valid: it must not be what gets read.
    with pytest.raises(GGUFError, match="NUL"):
        read(str(plain.path) + "\0.junk")


def test_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    script = (
        "import sys\nfrom nlm_native import GGUFError\nfrom nlm_native.core.gguf import read\n"
        "try:\n    read(sys.argv[1])\nexcept GGUFError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "not a regular file" in r.stdout


# ---------------------------------------------------------------------------
# Subprocess sweeps: a crash is a non-zero exit status, not a dead pytest
# ---------------------------------------------------------------------------

SWEEP_SCRIPT = r"""
import json, sys
from nlm_native import GGUFError
from nlm_native.core.gguf import read

paths = json.load(open(sys.argv[1]))
results = {}
for p in paths:
    print(p, file=sys.stderr, flush=True)  # the last line names the file if it crashes
    try:
        read(p)
    except GGUFError as e:
        results[p] = "GGUFError" if p in str(e) else f"GGUFError without the path: {e}"
    except BaseException as e:
        results[p] = f"{type(e).__name__}: {e}"
    else:
        results[p] = "read"
print(json.dumps(results))
"""


def run_script(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (
        f"exit status {r.returncode}; last lines of stderr:\n{r.stderr[-2000:]}\n{r.stdout[-2000:]}"
    )
    return r


def test_subprocess_sweep(bases: dict[str, Base], tmp_path: Path) -> None:
    d = tmp_path / "sweep"
    d.mkdir()
    paths: list[str] = []

    def add(name: str, data: bytes) -> None:
        p = d / f"{len(paths):04d}-{name}.gguf"
        p.write_bytes(data)
        paths.append(str(p))

    for case in CASES:
        add(case.id.replace("*", "^"), hostile_bytes(case, bases))
    for version in (0, 1, 4):
        add(f"version-{version}", put_u32(bases["plain"].data, VERSION_POS, version))
    for name, base in bases.items():
        for n in truncation_points(base):
            add(f"{name}-cut-{n}", base.data[:n])
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))

    results = json.loads(run_script(SWEEP_SCRIPT, listing).stdout)
    assert len(results) == len(paths)
    bad = {Path(p).name: outcome for p, outcome in results.items() if outcome != "GGUFError"}
    assert not bad


FUZZ_SCRIPT = r"""
import json, random, struct, sys
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from nlm_native import GGUFError
from nlm_native.core.gguf import read

base_path, work_path, fields_path, seed, n = sys.argv[1:6]
base = open(base_path, "rb").read()
fields = json.load(open(fields_path))  # positions of counts, lengths, types, dims, offsets
end = fields["directory_end"]
rng = random.Random(int(seed))
INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 32, 33, 63, 64, 255, 256, 2**31, 2**32 - 1, 2**32,
               2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1, len(base), len(base) - 1]

def check(c):
    assert c.alignment > 0 and c.alignment & (c.alignment - 1) == 0
    assert c.directory_end <= c.data_offset and c.data_offset % c.alignment == 0
    extents = []
    for t in c.tensors:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type_id)]
        assert 1 <= len(t.shape) <= 4 and all(x > 0 for x in t.shape) and t.shape[0] % block == 0
        assert t.n_bytes == int(np.prod(t.shape, dtype=object)) // block * type_size
        assert t.offset % c.alignment == 0 and t.offset >= c.data_offset
        assert t.offset + t.n_bytes <= c.file_size
        extents.append((t.offset, t.offset + t.n_bytes))
    extents.sort()
    for (_, e), (s, _) in zip(extents, extents[1:]):
        assert e <= s

counts = {"read": 0, "GGUFError": 0}
for i in range(int(n)):
    data = bytearray(base)
    r = rng.random()
    if r < 0.4:
        pos = rng.randrange(end)
        data[pos] = rng.randrange(256)
        what = f"byte {pos} = {data[pos]}"
    else:
        if r < 0.7:
            pos, width = rng.choice(fields["u64"]), 8
        elif r < 0.85:
            pos, width = rng.choice(fields["u32"]), 4
        else:
            pos, width = rng.randrange(end - 7), 8
        v = rng.choice(INTERESTING) if rng.random() < 0.6 else rng.getrandbits(64)
        v %= 2 ** (8 * width)
        data[pos:pos + width] = v.to_bytes(width, "little")
        what = f"u{8 * width} at {pos} = {v}"
    print(i, what, file=sys.stderr, flush=True)  # the last line names the mutation if it crashes
    with open(work_path, "wb") as f:
        f.write(data)
    try:
        c = read(work_path)
    except GGUFError:
        counts["GGUFError"] += 1
        continue
    except BaseException as e:
        print(f"mutation {i} ({what}): {type(e).__name__}: {e}")
        sys.exit(3)
    try:
        check(c)
    except AssertionError:
        print(f"mutation {i} ({what}) read, but the directory is inconsistent: {c}")
        sys.exit(4)
    counts["read"] += 1
print(json.dumps(counts))
"""


def field_positions(lay: Layout) -> dict[str, Any]:
    u64 = [N_TENSORS_POS, N_KV_POS]
    u32 = [VERSION_POS]
    for kv in lay.kvs.values():
        u64.append(kv.pos)
        u32.append(kv.type_pos)
        if kv.vtype == ARRAY:
            u32.append(kv.elem_type_pos)
            u64.append(kv.length_pos)
        elif kv.vtype == STRING:
            u64.append(kv.value_pos)
    for t in lay.tensors:
        u64 += [t.pos, *t.dim_pos, t.offset_pos]
        u32 += [t.n_dims_pos, t.type_pos]
    return {"u64": u64, "u32": u32, "directory_end": lay.directory_end}


@pytest.mark.parametrize("name", ["plain", "aligned"])
def test_fuzz_mutations_in_subprocess(bases: dict[str, Base], tmp_path: Path, name: str) -> None:
    base = bases[name]
    fields = tmp_path / "fields.json"
    fields.write_text(json.dumps(field_positions(base.layout)))
    n = 300 if name == "plain" else 150
    r = run_script(FUZZ_SCRIPT, base.path, tmp_path / "fuzz.gguf", fields, 20240601, n)
    counts = json.loads(r.stdout)
    assert counts["read"] + counts["GGUFError"] == n
    assert counts["GGUFError"] > n // 4  # the mutations do hit the structure
