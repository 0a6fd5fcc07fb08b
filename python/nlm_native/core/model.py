"""``Model``: a GGUF model loaded by the C++ core, with its paged KV cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .batch import Batch
from .gguf import GGUFContents, from_core

KV_CODECS = ("f16", "f32", "int8", "int4")


def resolve_kv_codec(kv_codec: str | None, kv_type: str | None) -> str:
    """The KV codec asked for by ``kv_codec`` or its older name ``kv_type`` (default "f16")."""
    if kv_codec is not None and kv_type is not None and kv_codec != kv_type:
        raise ValueError(f"kv_codec={kv_codec!r} and kv_type={kv_type!r} disagree; pass kv_codec only")
    codec = kv_codec or kv_type or "f16"
    if codec not in KV_CODECS:
        raise ValueError(f"kv_codec must be one of {', '.join(map(repr, KV_CODECS))}, got {codec!r}")
    return codec


class Model:
    """A LLaMA-family model (``llama``, ``mistral``, ``qwen2``) mapped from a GGUF file.

    Two levels of use:

    * :meth:`eval` — logits for every position of one fresh token sequence.
    * the batched API — :meth:`new_sequence`, :meth:`fork`, :meth:`free`, and
      :meth:`forward` over a :class:`~nlm_native.Batch` holding entries of many
      sequences at once. Each sequence owns a block table in a paged KV cache of
      ``kv_blocks`` blocks of ``block_tokens`` tokens; forked sequences share
      their parent's blocks until they write to them.

    The GIL is released while the core computes; calls on one model are serialised.
    """

    def __init__(self, core: _core.Model, path: str) -> None:
        self._core = core
        self.path = path
        self._gguf: GGUFContents = from_core(core.gguf())
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        kv_blocks: int | None = None,
        block_tokens: int = 32,
        kernels: str | None = None,
        kv_codec: str | None = None,
        kv_type: str | None = None,
    ) -> Model:
        """Map and validate the GGUF file at ``path``.

        ``n_ctx`` is the most tokens one sequence may hold and, unless ``kv_blocks``
        says otherwise, the KV pool's capacity in tokens (shared by all sequences,
        as in llama.cpp). ``n_threads`` defaults to the number of CPUs.
        Raises :class:`~nlm_native.GGUFError` for unreadable files and
        :class:`~nlm_native.ModelError` for files that are not a supported model.

        ``kv_codec`` is how the KV pool stores keys and values, and so what attention reads and what
        persists: ``"f16"`` (the default, as llama.cpp), ``"f32"``, or the codecs ``"int8"`` and
        ``"int4"`` (per-group minimum and scale; keys grouped per channel over a block's tokens,
        values per token in groups of 32 channels). With a codec a sequence's newest, not yet full
        block stays f16. ``kv_type`` is its older name.
        """
        if n_threads is not None and n_threads <= 0:
            raise ValueError(f"n_threads must be positive, got {n_threads}")
        if kv_blocks is not None and kv_blocks <= 0:
            raise ValueError(f"kv_blocks must be positive, got {kv_blocks}")
        codec = resolve_kv_codec(kv_codec, kv_type)
        p = os.fspath(path)
        core = _core.Model(
            p, n_ctx=n_ctx, kv_blocks=kv_blocks or 0, block_tokens=block_tokens, n_threads=n_threads or 0,
            kernels=kernels or "", kv_type=codec,
        )
        return cls(core, p)

    # --- description -------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF metadata as a dict of Python values."""
        return self._gguf.metadata

    @property
    def gguf(self) -> GGUFContents:
        """Header, metadata and tensor directory of the file."""
        return self._gguf

    @property
    def hparams(self) -> dict[str, Any]:
        """Hyper-parameters the core read from ``<arch>.*`` metadata."""
        return self._core.hparams

    @property
    def arch(self) -> str:
        return str(self._core.hparams["arch"])

    @property
    def n_vocab(self) -> int:
        return int(self._core.hparams["n_vocab"])

    @property
    def n_ctx(self) -> int:
        return int(self._core.n_ctx)

    @property
    def n_threads(self) -> int:
        return int(self._core.n_threads)

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        if n <= 0:
            raise ValueError(f"n_threads must be positive, got {n}")
        self._core.n_threads = n

    @property
    def kernels(self) -> str:
        """The kernel tier in use ("ref", "generic", "avx2", "avxvnni", "avx512")."""
        return str(self._core.kernels)

    @property
    def kv_codec(self) -> str:
        """How cached keys and values are stored: "f16" (IEEE half), "f32", "int8" or "int4"."""
        return str(self._core.kv_type)

    @property
    def kv_type(self) -> str:
        """The older name of :attr:`kv_codec`."""
        return self.kv_codec

    def memory(self) -> dict[str, int]:
        """Bytes the model holds, by kind.

        ``weights_mapped_bytes`` (the GGUF file, mapped read-only), ``weights_repacked_bytes``
        (the kernel tier's interleaved copies of the quantized matrices),
        ``weights_copied_bytes`` (norms and biases as floats, and any tensor whose mapped
        data was not aligned for the kernels), ``kv_pool_bytes`` (the whole KV pool),
        ``kv_used_bytes`` (its blocks in use), ``kv_block_bytes``, ``kv_bytes_per_token``
        and ``scratch_bytes`` (the forward pass's buffers, grown to the largest batch so far).
        """
        return {str(k): int(v) for k, v in self._core.memory().items()}

    def read_kv(self, seq_id: int, layer: int, token: int, *, values: bool = False) -> np.ndarray:
        """The cached keys (or values) of one token of a sequence at one layer: float32 ``(n_head_kv, head_dim)``."""
        return self._core.read_kv(seq_id, layer, token, values)

    @property
    def block_tokens(self) -> int:
        return int(self._core.block_tokens)

    @property
    def kv_blocks(self) -> int:
        return int(self._core.kv_blocks)

    @property
    def kv_free_blocks(self) -> int:
        return int(self._core.kv_free_blocks)

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the file's header, metadata and tensor directory.

        Identifies the model's weights layout and metadata without hashing the
        weights themselves; stable across runs and machines.
        """
        if self._fingerprint is None:
            with open(self.path, "rb") as f:
                self._fingerprint = hashlib.sha256(f.read(self._gguf.directory_end)).hexdigest()
        return self._fingerprint

    # --- sequences -----------------------------------------------------------------------

    def new_sequence(self) -> int:
        """An empty sequence; returns its id."""
        return int(self._core.new_sequence())

    def fork(self, seq_id: int) -> int:
        """A new sequence sharing every KV block of ``seq_id`` (no copy until written)."""
        return int(self._core.fork(seq_id))

    def free(self, seq_id: int) -> None:
        """Release the sequence and its references to KV blocks."""
        self._core.free_sequence(seq_id)

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` cached tokens of the sequence."""
        self._core.truncate(seq_id, n_tokens)

    def sequence_length(self, seq_id: int) -> int:
        """Number of tokens cached for the sequence (the next entry's slot)."""
        return int(self._core.sequence_length(seq_id))

    def export_block(self, seq_id: int, index: int) -> bytes:
        """The raw KV bytes of full block ``index`` of a sequence: for each layer and kv head, its keys
        ``(block_tokens, head_dim)`` then its values, in the pool's type (``kv_block_bytes`` bytes)."""
        return self._core.export_block(seq_id, index)

    def append_block(self, seq_id: int, data: bytes) -> None:
        """Append one block of raw KV bytes (``export_block``'s layout) to a sequence holding whole
        blocks: its cache grows by ``block_tokens`` tokens. ``KVCacheFull`` when the pool has no block."""
        self._core.append_block(seq_id, data)

    def sequences(self) -> list[int]:
        return list(self._core.sequence_ids())

    # --- compute -------------------------------------------------------------------------

    def forward(self, batch: Batch, *, out: np.ndarray | None = None) -> np.ndarray:
        """Run one step over ``batch``; float32 logits ``(n_marked, n_vocab)``.

        ``out``, when given, is a writeable C-contiguous float32 array of that shape that
        receives the logits (and is returned), so a decode loop can reuse one buffer.

        Rows are the entries marked ``logits=True``, in entry order. On a bad
        entry (token id out of range, unknown sequence, sequence longer than
        ``n_ctx``) a ``ValueError`` is raised, when the pool lacks free blocks
        :class:`~nlm_native.KVCacheFull`, and when the logits come out NaN or
        infinite (the weights overflow) :class:`~nlm_native.NumericError`; in every
        case no sequence changes.
        """
        if len(batch) == 0:
            raise ValueError("forward: the batch is empty")
        tokens, positions, seq_ids, rows = batch.arrays()
        return self._core.forward(tokens, positions, seq_ids, rows, out)

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits ``(len(tokens), n_vocab)`` for every position of a fresh sequence."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("eval: tokens is empty")
        seq = self.new_sequence()
        try:
            batch = Batch()
            batch.add_sequence(tokens, 0, seq, logits="all")
            return self.forward(batch)
        finally:
            self.free(seq)

    def summary(self) -> dict[str, Any]:
        """A short description for humans: architecture, sizes, tensor types."""
        types: dict[str, int] = {}
        for t in self._gguf.tensors:
            types[t.type] = types.get(t.type, 0) + 1
        md = self.metadata
        return {
            "path": self.path,
            "name": md.get("general.name"),
            "arch": self.arch,
            "file_type": md.get("general.file_type"),
            "gguf_version": self._gguf.version,
            "tensors": len(self._gguf.tensors),
            "tensor_types": dict(sorted(types.items())),
            "fingerprint": self.fingerprint,
            "kernels": self.kernels,
            "kv_codec": self.kv_codec,
            **{k: v for k, v in self.hparams.items() if k != "arch"},
        }

    def __repr__(self) -> str:
        return f"Model({self.path!r}, arch={self.arch!r}, n_vocab={self.n_vocab}, n_ctx={self.n_ctx})"
