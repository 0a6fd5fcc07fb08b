"""Reading GGUF files: metadata and the tensor directory, validated by the C++ reader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import _core


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory.

    ``shape`` is in GGUF order: ``shape[0]`` is the row length (the fastest-varying
    dimension), so a ``(rows, cols)`` matrix appears as ``(cols, rows)``.
    ``offset`` is the absolute byte offset of the data in the file.
    """

    name: str
    type: str
    type_id: int
    shape: tuple[int, ...]
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFContents:
    """What :func:`read` returns."""

    path: str
    version: int
    alignment: int
    data_offset: int
    directory_end: int
    file_size: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.path}: no tensor named {name!r}")


def from_core(raw: dict[str, Any]) -> GGUFContents:
    """Build a :class:`GGUFContents` from the dict the core returns."""
    return GGUFContents(
        path=raw["path"],
        version=raw["version"],
        alignment=raw["alignment"],
        data_offset=raw["data_offset"],
        directory_end=raw["directory_end"],
        file_size=raw["file_size"],
        metadata=raw["metadata"],
        tensors=[TensorInfo(**t) for t in raw["tensors"]],
    )


def read(path: str | os.PathLike[str]) -> GGUFContents:
    """Read and validate the GGUF file at ``path`` (v2 or v3).

    Returns its metadata as a dict of Python values (arrays as lists) and its tensor
    directory. Raises :class:`nlm_native.GGUFError` (a ``ValueError``) naming the file
    and the fault for anything truncated, inconsistent or unsupported.
    """
    return from_core(_core.gguf_read(os.fspath(path)))
