"""``AsyncEngine``: the engine for asyncio code (a server): the same engine thread, streams awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..sampling import SamplingParams
from .engine import Engine, EngineStats, RequestMetrics, RequestStream
from .outputs import StreamChunk


class AsyncRequestStream(AsyncIterator[StreamChunk]):
    """A request's chunks, awaited; ``aclose()`` (or cancelling the consumer) aborts the request.

    The engine thread wakes the event loop through ``call_soon_threadsafe``: no thread waits per stream.
    """

    def __init__(self, stream: RequestStream, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._ready = asyncio.Event()
        self.request_id = stream.request_id
        stream._notify = lambda: loop.call_soon_threadsafe(self._ready.set)
        self._ready.set()  # items may have arrived before the hook was in place

    def __aiter__(self) -> AsyncRequestStream:
        return self

    async def __anext__(self) -> StreamChunk:
        try:
            while True:
                for _ in range(2):  # again after clearing the flag, so no wake-up is lost
                    try:
                        chunk = self._stream.poll(block=False)
                    except StopIteration:
                        raise StopAsyncIteration from None
                    if chunk is not None:
                        return chunk
                    self._ready.clear()
                await self._ready.wait()
        except asyncio.CancelledError:
            self._stream.close(wait=False)
            raise

    async def aclose(self) -> None:
        self._stream.close(wait=False)

    @property
    def metrics(self) -> RequestMetrics | None:
        return self._stream.metrics


class AsyncEngine:
    """:class:`Engine` with ``submit`` returning an async iterator of :class:`StreamChunk`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, **kw: Any
                     ) -> AsyncRequestStream:
        """As :meth:`Engine.submit` (bad requests raise here)."""
        stream = self.engine.submit(prompt_ids, params, **kw)
        return AsyncRequestStream(stream, asyncio.get_running_loop())

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
