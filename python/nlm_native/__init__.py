"""nlm_native: LLaMA-family GGUF inference with a C++ core.

Public names are re-exported here; ``nlm_native._core`` is an implementation detail.
"""

from ._core import GGUFError, KVCacheFull, ModelError, cpu_features
from .batch import Batch
from .model import Model
from .tokenizer import Tokenizer

__all__ = ["Batch", "GGUFError", "cpu_features", "KVCacheFull", "Model", "ModelError", "Tokenizer", "__version__"]
__version__ = "0.1.0"
