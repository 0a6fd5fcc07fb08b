"""nlm_native: LLaMA-family GGUF inference with a C++ core.

Public names are re-exported here; ``nlm_native._core`` is an implementation detail.
"""

from ._core import GGUFError, KVCacheFull, ModelError
from .batch import Batch
from .model import Model

__all__ = ["Batch", "GGUFError", "KVCacheFull", "Model", "ModelError", "__version__"]
__version__ = "0.1.0"
