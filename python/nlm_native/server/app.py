"""The ASGI app: OpenAI's endpoints over one :class:`~nlm_native.LLM`, with auth, limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import EngineClosed, QueueFull, RequestTimeout
from ..llm import LLM
from .auth import Authenticator, key_id, read_users
from .config import PRIORITIES, CallerPolicy, ServerConfig, metrics_url
from .errors import ApiError, body, internal, param_of, response
from .limits import RateLimiter
from .metrics import Metrics
from .metrics_sink import MetricsSink
from .openapi import ERRORS, document, errors
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, checked

log = logging.getLogger("nlm_native.server")
OPEN_PATHS = {"/health"}


def _load_llm(config: ServerConfig) -> LLM:
    from ..core.fetch import fetch

    return LLM(config.model or fetch(), n_threads=config.threads, n_ctx=config.ctx, kv_codec=config.kv_codec,
               kv_store=config.kv_store, blob_store=config.blob_store, model_name=config.model_name,
               max_waiting=config.max_waiting, max_seqs=config.max_seqs)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _State:
    def __init__(self, config: ServerConfig, llm: LLM, owns: bool) -> None:
        self.config, self.llm, self.owns = config, llm, owns
        keys = config.keys()
        users, user_policies = read_users(config.basic_users_file) if config.basic_users_file else ({}, {})
        self.auth = Authenticator([k for k, _ in keys], users)
        # what a caller may do, by caller id: its own policy over the server-wide settings
        self.policies = {key_id(k): p for k, p in keys if p != CallerPolicy()} | user_policies
        self.limits = RateLimiter()
        self.metrics = Metrics()
        url = metrics_url(config)
        self.sink = MetricsSink(url) if url else None
        self.started = time.time()
        self.draining = False
        self.active = 0

    def policy(self, caller: str) -> CallerPolicy:
        """What ``caller`` may do: its own policy, the server-wide settings where it names nothing."""
        own = self.policies.get(caller, CallerPolicy())
        c = self.config
        return CallerPolicy(own.max_priority or c.max_priority, own.requests_per_minute or c.requests_per_minute,
                            own.tokens_per_minute or c.tokens_per_minute)


def create_app(config: ServerConfig | None = None, llm: LLM | None = None) -> FastAPI:
    """The server's ASGI app. Without ``llm`` it loads one from ``config`` and closes it at shutdown
    (after draining running streams for up to ``config.drain_seconds`` and flushing the stores)."""
    config = (config or ServerConfig()).check()
    st = _State(config, llm or _load_llm(config), owns=llm is None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        st.draining = True  # stop admitting; let running requests finish
        deadline = time.monotonic() + config.drain_seconds
        while st.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = st.active
        if st.owns:
            await run_in_threadpool(st.llm.close)  # ends what is left, flushes the stores
        if st.sink is not None:
            await run_in_threadpool(st.sink.close)
        log.info(json.dumps({"event": "shutdown", "unfinished": left, "closed_model": st.owns}))

    app = FastAPI(title="nlm_native", summary="OpenAI-compatible completions on a GGUF model",
                  version=_version(), lifespan=lifespan)
    app.state.nlm = st

    @app.middleware("http")
    async def gate(request: Request, call_next: Any) -> Response:
        rid = request.headers.get("x-request-id") or "req-" + uuid.uuid4().hex[:16]
        request.state.request_id = rid
        t0 = time.monotonic()
        caller = "-"
        try:
            if request.url.path not in OPEN_PATHS:
                who = st.auth.check(request.headers.get("authorization"))
                if who is None:
                    raise ApiError(401, "missing or invalid credentials: send Authorization: Bearer <API key>",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                caller = who
            request.state.caller = caller
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > config.max_body_bytes:
                raise ApiError(413, f"the request body is {size} bytes, more than the {config.max_body_bytes} allowed",
                               code="request_too_large")
            resp = await call_next(request)
        except ApiError as e:
            resp = response(e)
        except Exception:  # logged with its traceback; the client learns only the request id
            log.exception("request %s failed", rid)
            resp = JSONResponse(internal(rid), status_code=500)
        resp.headers["X-Request-Id"] = rid
        log.info(json.dumps({"event": "request", "request_id": rid, "method": request.method,
                             "path": request.url.path, "status": resp.status_code, "caller": caller,
                             "ms": round((time.monotonic() - t0) * 1e3, 1)}))
        return resp

    if config.cors_origins:  # added last, so outermost: preflights (which carry no key) never meet the gate
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Priority", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(body(e.status_code, msg, code="not_found" if e.status_code == 404 else None),
                            status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(body(422, str(e.errors()[:3])), status_code=422)

    # --- endpoints ------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = st.llm.engine.stats()
        return {"status": "draining" if st.draining else "ok", "model": st.llm.model_name,
                "uptime_s": round(time.time() - st.started, 3),
                "started_at": dt.datetime.fromtimestamp(st.started, dt.UTC).isoformat(),
                "queue": {"running": s.running, "prefilling": s.prefilling, "waiting": s.waiting}}

    @app.get("/v1/models", responses=errors(401))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(st)]}

    @app.get("/v1/models/{model_id}", responses=errors(401, 404))
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(st, model_id)
        return _model_card(st)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(request: Request) -> Response:
        def start(fields: dict[str, Any]) -> tuple[Any, int]:
            prompt = fields.pop("prompt")
            return (lambda **kw: st.llm.create_completion(prompt, **kw)), _size_of(prompt)

        return await _run(st, request, "completions", CompletionRequest, start)

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat_completions(request: Request) -> Response:
        def start(fields: dict[str, Any]) -> tuple[Any, int]:
            messages, tools = fields.pop("messages"), fields.pop("tools", None)
            return (lambda **kw: st.llm.create_chat_completion(messages, tools, **kw)), _size_of(messages)

        return await _run(st, request, "chat", ChatCompletionRequest, start)

    @app.post("/tokenize", responses=errors(400, 401, 413))
    async def tokenize(request: Request) -> dict[str, Any]:
        fields = await _json_body(request, config.max_body_bytes)
        fields = checked(TokenizeRequest, fields)
        text = fields["content"] if fields.get("content") is not None else fields["prompt"]
        add_special = fields.get("add_special", True)
        ids = await run_in_threadpool(st.llm.tokenize, text, add_special=add_special, special=True)
        return {"tokens": ids, "model": st.llm.model_name}

    @app.post("/detokenize", responses=errors(400, 401, 413))
    async def detokenize(request: Request) -> dict[str, Any]:
        fields = await _json_body(request, config.max_body_bytes)
        fields = checked(DetokenizeRequest, fields)
        ids = fields["tokens"]
        n_vocab = len(st.llm.tokenizer)
        bad = next((i for i, t in enumerate(ids) if t >= n_vocab), None)
        if bad is not None:
            raise ApiError(400, f"tokens[{bad}] is {ids[bad]}, outside the vocabulary [0, {n_vocab})",
                           param=f"tokens[{bad}]", code="invalid_field")
        return {"content": await run_in_threadpool(st.llm.detokenize, ids), "model": st.llm.model_name}

    @app.get("/metrics", responses=errors(401))
    async def metrics() -> Response:
        data = st.metrics.render(st.llm.engine.stats(), st.llm.prefix_cache)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/memory", responses=errors(401))
    async def memory() -> dict[str, Any]:
        return {"rss_bytes": _rss_bytes(), **st.llm.memory()}

    app.openapi = lambda: document(app, OPEN_PATHS)  # type: ignore[method-assign]
    return app


# --- helpers ----------------------------------------------------------------------------------------


def _version() -> str:
    from .. import __version__

    return __version__


def _model_card(st: _State) -> dict[str, Any]:
    return {"id": st.llm.model_name, "object": "model", "created": int(st.started), "owned_by": "nlm_native"}


def _check_model(st: _State, name: Any) -> None:
    if name is not None and name != st.llm.model_name:
        raise ApiError(404, f"the model {name!r} does not exist; this server has {st.llm.model_name!r}",
                       param="model", code="model_not_found")


def _size_of(prompt: Any) -> int:
    """A quick upper-bound-ish token estimate of a prompt for the token rate limit (4 bytes per token)."""
    return len(json.dumps(prompt, default=str)) // 4 + 1


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"the request body is more than the {limit} bytes allowed", code="request_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _priority(request: Request, fields: dict[str, Any], cap: str) -> None:
    """The request's priority from its body or ``X-Priority``, capped at what the caller may ask for."""
    header = request.headers.get("x-priority")
    if "priority" not in fields and header is not None:
        fields["priority"] = header.strip().lower()
    p = fields.get("priority")
    if p is None:
        p = fields["priority"] = "normal"  # the engine's default, capped like an asked-for one
    if p not in PRIORITIES:
        raise ApiError(400, f"priority must be one of {', '.join(PRIORITIES)}, got {p!r}", param="priority")
    if PRIORITIES.index(p) > PRIORITIES.index(cap):
        fields["priority"] = cap


async def _run(st: _State, request: Request, endpoint: str, model: type[BaseModel],
               start: Callable[[dict[str, Any]], tuple[Any, int]]) -> Response:
    """One completions or chat request, from its body to its response; every outcome, refusals
    included, counted by status and written as an INFERENCE_METRICS row."""
    t0 = time.monotonic()
    row = _Row(st, request, endpoint, t0)
    status, admitted, streaming = 500, False, False
    try:
        if st.draining:
            raise ApiError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
        fields = checked(model, await _json_body(request, st.config.max_body_bytes))
        call, prompt_size = start(fields)
        _check_model(st, fields.pop("model", None))
        policy = st.policy(request.state.caller)
        _priority(request, fields, policy.max_priority or st.config.max_priority)
        cap = st.config.request_timeout
        if cap is not None:  # the server's timeout is also the most a request may ask for
            fields["timeout"] = cap if fields.get("timeout") is None else min(fields["timeout"], cap)
        max_tokens = fields.get("max_tokens") or fields.get("max_completion_tokens") or 256
        wait = st.limits.check(request.state.caller, prompt_size + max_tokens, policy.requests_per_minute,
                               policy.tokens_per_minute)
        if wait:
            raise ApiError(429, f"rate limit reached for {request.state.caller}; retry in {wait:.1f} s",
                           code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(wait + 0.5)))})
        st.active += 1
        admitted = True
        if not fields.get("stream"):
            result = await run_in_threadpool(call, **fields)
            status = 200
            st.metrics.requests.labels(endpoint, "200").inc()
            st.metrics.observe_usage(result.get("usage"))
            st.metrics.e2e.observe(time.monotonic() - t0)
            row.usage = result.get("usage")
            return JSONResponse(result)
        hidden_usage = not (fields.get("stream_options") or {}).get("include_usage")
        if hidden_usage:  # counted for the metrics, not sent
            fields["stream_options"] = {"include_usage": True}
        chunks = await run_in_threadpool(call, **fields)  # bad requests raise here, before any byte is sent
        streaming = True
        return _EventStream(_sse(st, endpoint, chunks, t0, row, hidden_usage), media_type="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    except ApiError as e:
        status = e.status
        raise
    except Exception as e:
        err = _api_error(e)
        if err is None:
            raise
        status = err.status
        raise err from None
    finally:
        if not streaming:  # a stream counts itself out when it ends
            if admitted:
                st.active -= 1
            if status != 200:
                st.metrics.requests.labels(endpoint, str(status)).inc()
            row.write(status)


def _api_error(e: Exception) -> ApiError | None:
    """What a failure of the engine or of a request's fields answers (None: a 500, a bug)."""
    if isinstance(e, ValueError | TypeError):
        return ApiError(400, str(e), param=param_of(str(e)))
    if isinstance(e, QueueFull):
        return ApiError(503, str(e), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(e, RequestTimeout):
        return ApiError(504, str(e), code="timeout")
    if isinstance(e, EngineClosed):
        return ApiError(503, str(e), code="shutting_down", headers={"Retry-After": "5"})
    return None


class _EventStream(StreamingResponse):
    """A streaming response that closes its event generator itself when the client goes away: Starlette
    cancels the sending task and leaves the generator to the garbage collector, whose finalizers may
    then run the request's cleanup in any thread, the engine's included."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


class _Row:
    """One request's INFERENCE_METRICS row, written when it ends."""

    def __init__(self, st: _State, request: Request, endpoint: str, t0: float) -> None:
        self.st, self.endpoint, self.t0 = st, endpoint, t0
        self.request_id = request.state.request_id
        self.caller = request.state.caller
        self.usage: dict[str, Any] | None = None
        self.ttft: float | None = None

    def write(self, status: int) -> None:
        if self.st.sink is not None:
            self.st.sink.record(self.request_id, self.caller, self.st.llm.model_name, self.endpoint, status,
                                time.monotonic() - self.t0, self.usage, self.ttft)


async def _sse(st: _State, endpoint: str, chunks: Iterator[dict[str, Any]], t0: float, row: _Row,
               hidden_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events, one ``data:`` line per chunk, then ``data: [DONE]``. A client that goes away
    cancels this generator: closing the chunk iterator aborts the request, freeing its blocks."""
    done = object()
    last = None
    status = "200"
    try:
        while True:
            try:
                item = await run_in_threadpool(next, chunks, done)
            except Exception as e:  # as before the stream, but told in an event
                err = _api_error(e)
                if err is None:  # logged; the client learns only the request id
                    log.exception("stream of request %s failed", row.request_id)
                status = "500" if err is None else str(err.status)
                event = internal(row.request_id) if err is None else body(err.status, err.message, err.code, err.param)
                yield f"data: {json.dumps(event)}\n\n".encode()
                break
            if item is done:
                break
            now = time.monotonic()
            if isinstance(item, dict) and item.get("usage"):
                st.metrics.observe_usage(item["usage"])
                row.usage = item["usage"]
                if hidden_usage and not item.get("choices"):
                    continue  # the client did not ask for it
                if hidden_usage:
                    item = {**item, "usage": None}
            if last is None:
                st.metrics.ttft.observe(now - t0)
                row.ttft = now - t0
            else:
                st.metrics.itl.observe(now - last)
            last = now
            yield f"data: {json.dumps(item)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    except BaseException:
        status = "499"  # the client went away
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):  # a cancelled stream (client gone) still aborts its request
                await run_in_threadpool(close)
        st.active -= 1
        st.metrics.requests.labels(endpoint, status).inc()
        st.metrics.e2e.observe(time.monotonic() - t0)
        row.write(int(status))
