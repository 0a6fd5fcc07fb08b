"""nlm_native: LLaMA-family GGUF inference with a C++ core.

Public names are re-exported here; ``nlm_native._core`` is an implementation detail.
"""

from ._core import GGUFError, KVCacheFull, ModelError, NumericError, cpu_features
from .batch import Batch
from .chat import ChatTemplate, ChatTemplateError
from .detokenizer import IncrementalDetokenizer
from .engine import StreamChunk, TokenLogprob
from .generation import LLM, CompletionOutput
from .model import Model
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer
from .tools import ToolCall, parse_tool_calls

__all__ = [
    "Batch", "ChatTemplate", "ChatTemplateError", "CompletionOutput", "GGUFError", "IncrementalDetokenizer",
    "KVCacheFull", "LLM", "Model", "ModelError", "NumericError", "Sampler", "SamplingParams", "StreamChunk",
    "TokenLogprob", "Tokenizer", "ToolCall", "cpu_features", "parse_tool_calls", "__version__",
]
__version__ = "0.1.0"
