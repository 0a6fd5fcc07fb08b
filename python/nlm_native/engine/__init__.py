"""The engine: many concurrent requests over one model, batched step by step.

:class:`Engine` (threads) and :class:`AsyncEngine` (asyncio) submit requests and return streams
of :class:`StreamChunk`; the loop is schedule -> execute -> update (:mod:`.engine`).
"""

from .async_engine import AsyncEngine, AsyncRequestStream
from .cache import BlockEvent, PrefixCache
from .engine import Engine, EngineClosed, EngineStats, RequestMetrics, RequestStream, RequestTimeout, interleave
from .outputs import CompletionOutput, StreamChunk, TokenLogprob, fold
from .request import Priority
from .scheduler import QueueFull, SchedulerConfig

__all__ = ["AsyncEngine", "AsyncRequestStream", "BlockEvent", "CompletionOutput", "Engine", "EngineClosed",
           "EngineStats", "PrefixCache", "Priority", "QueueFull", "RequestMetrics", "RequestStream", "RequestTimeout",
           "SchedulerConfig", "StreamChunk", "TokenLogprob", "fold", "interleave"]
