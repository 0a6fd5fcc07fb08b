"""nlm_native: LLaMA-family GGUF inference with a C++ core.

Public names are re-exported here; ``nlm_native._core`` is an implementation detail. The package
is laid out by job, imports flowing one way (api -> engine -> sampling, text -> core):
:mod:`.core` (model, batch, gguf, fetch), :mod:`.text` (tokenizer, detokenizer, stops, chat
templates), :mod:`.sampling` (params, sampler, grammar constraints), :mod:`.engine` (requests,
scheduler, loop, outputs), :mod:`.api` (OpenAI shapes, tools) and :class:`LLM` on top.
"""

from .api import ToolCall, parse_tool_calls
from .core import (
    Batch,
    GGUFError,
    KVCacheFull,
    Model,
    ModelError,
    NumericError,
    cpu_features,
    crc32c,
    fetch,
    gguf,
)
from .engine import (
    AsyncEngine,
    CompletionOutput,
    Engine,
    EngineClosed,
    EngineStats,
    Priority,
    QueueFull,
    RequestStream,
    RequestTimeout,
    SchedulerConfig,
    StreamChunk,
    TokenLogprob,
)
from .kvcache import Session, SessionError
from .llm import LLM
from .sampling import Grammar, Sampler, SamplingParams
from .text import ChatTemplate, ChatTemplateError, IncrementalDetokenizer, Tokenizer

__all__ = [
    "AsyncEngine", "Batch", "ChatTemplate", "ChatTemplateError", "CompletionOutput", "Engine", "EngineClosed",
    "EngineStats", "GGUFError", "Grammar", "IncrementalDetokenizer", "KVCacheFull", "LLM", "Model", "ModelError",
    "NumericError", "Priority", "QueueFull", "RequestStream", "RequestTimeout", "Sampler", "SamplingParams",
    "SchedulerConfig", "Session", "SessionError", "StreamChunk", "TokenLogprob", "Tokenizer", "ToolCall",
    "cpu_features", "crc32c", "fetch", "gguf", "parse_tool_calls", "__version__",
]
__version__ = "0.1.0"
