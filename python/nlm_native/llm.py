"""``LLM``: a model with its tokenizer, chat template and engine; text in, text out.

Two levels, as in llama-cpp-python:

* low: :meth:`LLM.tokenize`, :meth:`LLM.detokenize`, :meth:`LLM.generate` (lists of
  :class:`CompletionOutput`) and :meth:`LLM.stream` (an iterator of :class:`StreamChunk`), driven by
  one :class:`SamplingParams`;
* high: :meth:`LLM.create_completion` and :meth:`LLM.create_chat_completion`, taking
  OpenAI's request fields and returning OpenAI-shaped dicts (or, with ``stream=True``,
  an iterator of chunk dicts from the same generator). See :mod:`nlm_native.api`.

Every call goes through one :class:`~nlm_native.engine.Engine`, so calls from many threads share
each step's batch.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .api import create_chat_completion, create_completion
from .core import Model
from .engine import CompletionOutput, Engine, RequestStream, SchedulerConfig, fold
from .kvcache import (
    BlockLayout,
    PrefixIndex,
    RamTier,
    Session,
    SessionError,
    SessionStore,
    cache_fingerprint,
    open_block_store,
)
from .sampling import Constraint, Grammar, GrammarCompiler, SamplingParams
from .text import ChatTemplate, ChatTemplateError, Tokenizer

Prompt = str | Sequence[int]
_GRAMMAR_CACHE = 64


DEFAULT_RAM_BYTES = 256 << 20  # the in-RAM tier's budget for blocks the pool evicted


class LLM:
    """A GGUF model ready for generation.

    ``prefix_cache`` (on by default) keeps finished prompts' and answers' full KV blocks in the pool
    for later requests, giving them back when the pool needs room. ``kv_store`` (an SQL URL:
    ``sqlite:///kv.db``, ``postgresql://...``, ``hana+hdbcli://...``; or ``$NLM_KV_STORE``) and
    ``blob_store`` (``file:///dir`` or ``s3://bucket/prefix?endpoint_url=...``; or ``$NLM_BLOB_STORE``;
    default a directory in the cache folder) persist them. ``kv_max_bytes`` / ``kv_max_age_s`` (or
    ``$NLM_KV_MAX_BYTES`` / ``$NLM_KV_MAX_AGE_S``) bound what the stores keep of this model's blocks,
    least recently used going first. Blocks the pool gives back go to an in-RAM tier of ``kv_ram_bytes``
    (``$NLM_KV_RAM_BYTES``, default 256 MiB; 0 turns it off) before the stores.

    ``kv_codec`` ("f16", "f32", "int8" or "int4"; ``kv_type`` is its older name) is how the KV pool
    stores keys and values (:meth:`Model.load`): what attention reads, and what persists.

    ``n_ctx`` is the most tokens a sequence may hold (prompt plus output) and the size of
    the KV pool its samples share unless ``kv_blocks`` says otherwise. ``chat_template``
    overrides the file's ``tokenizer.chat_template``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        kv_blocks: int | None = None,
        block_tokens: int = 32,
        kernels: str | None = None,
        kv_codec: str | None = None,
        kv_type: str | None = None,
        chat_template: str | None = None,
        model_name: str | None = None,
        max_batch_tokens: int = 256,
        max_seqs: int = 64,
        max_waiting: int = 1024,
        prefix_cache: bool = True,
        kv_store: str | None = None,
        blob_store: str | None = None,
        kv_max_bytes: int | None = None,
        kv_max_age_s: float | None = None,
        kv_ram_bytes: int | None = None,
    ) -> None:
        self.model = Model.load(model_path, n_threads=n_threads, n_ctx=n_ctx, kv_blocks=kv_blocks,
                                block_tokens=block_tokens, kernels=kernels, kv_codec=kv_codec, kv_type=kv_type)
        md = self.model.metadata
        self.tokenizer = Tokenizer(md)
        self.eog_ids = self.tokenizer.end_of_generation_ids
        store = open_block_store(self.model, kv_store or os.environ.get("NLM_KV_STORE"),
                                 blob_store or os.environ.get("NLM_BLOB_STORE"),
                                 max_bytes=_env_number("NLM_KV_MAX_BYTES", kv_max_bytes, int),
                                 max_age_s=_env_number("NLM_KV_MAX_AGE_S", kv_max_age_s, float))
        ram_bytes = _env_number("NLM_KV_RAM_BYTES", kv_ram_bytes, int)
        ram = RamTier(BlockLayout.of(self.model, cache_fingerprint(self.model)),
                      DEFAULT_RAM_BYTES if ram_bytes is None else ram_bytes)
        self.prefix_cache = PrefixIndex(self.model, store=store, ram=ram) if prefix_cache or store else None
        self.sessions = SessionStore(cache_fingerprint(self.model), self.model.block_tokens, self.model.n_vocab,
                                     store, self.prefix_cache.writer if self.prefix_cache is not None else None)
        self.engine = Engine(self.model, self.tokenizer, config=SchedulerConfig(
            max_batch_tokens=max_batch_tokens, max_seqs=max_seqs, max_waiting=max_waiting), cache=self.prefix_cache)
        self._grammars: GrammarCompiler | None = None
        self._compiled: OrderedDict[Grammar, Callable[[], Constraint]] = OrderedDict()
        self._grammar_lock = threading.Lock()
        self.model_name = model_name or str(md.get("general.name") or os.path.basename(self.model.path))
        source = chat_template if chat_template is not None else md.get("tokenizer.chat_template")
        self._chat_template = self._template(source) if source else None

    # --- text <-> ids ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``: BOS added if the model wants one (and the text does not already
        begin with it); special-token text parsed only with ``special=True``."""
        ids = self.tokenizer.encode(text, add_special=False, special=special)
        bos = self.tokenizer.bos_id
        if add_special and self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if add_special and self.tokenizer.add_eos and self.tokenizer.eos_id is not None:
            ids.append(self.tokenizer.eos_id)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Text prompts are tokenized with special-token parsing on (as llama.cpp's server does)."""
        if isinstance(prompt, str):
            return self.tokenize(prompt, special=True)
        if isinstance(prompt, bytes):
            raise ValueError("the prompt must be text or a list of token ids, not bytes")
        ids = list(prompt)
        if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in ids):
            raise ValueError("a token-id prompt must be a list of integers")
        return [int(t) for t in ids]

    # --- chat ----------------------------------------------------------------------------

    def _template(self, source: str) -> ChatTemplate:
        def text(tid: int | None) -> str:
            return self.tokenizer.tokens[tid] if tid is not None and 0 <= tid < len(self.tokenizer) else ""

        return ChatTemplate(source, bos_token=text(self.tokenizer.bos_id), eos_token=text(self.tokenizer.eos_id))

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._chat_template

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                            tools: Sequence[Mapping[str, Any]] | None = None, add_generation_prompt: bool = True,
                            chat_template: str | None = None, **extra: Any) -> str:
        """The prompt text for ``messages`` (OpenAI's shape), as the model's template renders it."""
        tpl = self._template(chat_template) if chat_template is not None else self._chat_template
        if tpl is None:
            raise ChatTemplateError(f"{self.model_name} has no tokenizer.chat_template; pass chat_template= "
                                    "(a Jinja2 template) to LLM() or to this call")
        return tpl.render(messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra)

    # --- generation ------------------------------------------------------------------------

    def constraint(self, grammar: Grammar | None) -> Callable[[], Constraint] | None:
        """A factory of matchers for ``grammar`` (compiled once and cached; ``ValueError`` if bad)."""
        if grammar is None:
            return None
        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer, self.model.n_vocab)
            make = self._compiled.get(grammar)
            if make is None:
                make = self._grammars.compile(grammar)
                self._compiled[grammar] = make
                while len(self._compiled) > _GRAMMAR_CACHE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(grammar)
            return make

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, request_id: str | None = None,
               priority: str = "normal", timeout: float | None = None, session_id: str | None = None
               ) -> RequestStream:
        """Queue one request on the engine; its chunks arrive on the returned stream (bad requests raise here).

        With ``session_id`` the prompt continues that session: it is appended to the session's tokens
        (the prompts and answers so far), and when the request finishes its answer is appended too.
        Sessions persist in the stores (``save_session``), so another process continues them by name."""
        params = params or SamplingParams()
        on_finish = None
        if session_id is None:
            ids = self.prompt_ids(prompt)
        else:
            ids = self._session_prompt(session_id, prompt, params)

            def on_finish(tokens: list[int]) -> None:
                self.sessions.update(session_id, tokens)

        return self.engine.submit(ids, params, request_id=request_id, priority=priority, timeout=timeout,
                                  constraint=self.constraint(params.grammar), on_finish=on_finish)

    # --- sessions ---------------------------------------------------------------------------

    def _session_prompt(self, session_id: str, prompt: Prompt, params: SamplingParams) -> list[int]:
        if params.n != 1 or params.samples != 1:
            raise ValueError("a session continues with one answer: n and best_of must be 1 with session_id")
        s = self.sessions.get(session_id)
        if s is None or not s.tokens:
            return self.prompt_ids(prompt)
        more = self.tokenize(prompt, add_special=False, special=True) if isinstance(prompt, str) \
            else self.prompt_ids(prompt)
        return s.tokens + more

    def save_session(self, session_id: str) -> Session:
        """Writes a session to the persistent stores now, after every block computed so far (generation
        calls with ``session_id`` also save it, behind the request). Raises ``SessionError`` if unknown."""
        return self.sessions.save(session_id)

    def load_session(self, session_id: str) -> Session:
        """The session's tokens and messages, from this process or the stores (``SessionError`` if there
        is none). Its KV comes back with its next request: the blocks are found by hash in the pool or
        restored from the stores at admission."""
        s = self.sessions.get(session_id)
        if s is None:
            raise SessionError(f"no session {session_id!r}")
        return s

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, **kw: Any) -> RequestStream:
        """Chunks of text (and their token ids and log-probabilities) as they are generated.

        Every chunk is safe to show: whole characters, never a possible start of a stop
        string. The last chunk of each sample has ``finish_reason`` set. With ``n > 1``
        the samples' chunks interleave (see ``index``). ``best_of > n`` cannot stream.
        Bad requests raise here, before the iterator is returned; closing it aborts the request.
        """
        params = params or SamplingParams()
        if params.samples > params.n:
            raise ValueError("best_of > n cannot be streamed: the best samples are known only at the end")
        return self.submit(prompt, params, **kw)

    def check(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's ids, after checking that the request can run (raises ``ValueError``)."""
        ids = self.engine.check(self.prompt_ids(prompt), params)
        self.constraint(params.grammar)
        return ids

    def generate(self, prompt: Prompt | Sequence[Prompt], params: SamplingParams | None = None, **kw: Any
                 ) -> list[CompletionOutput] | list[list[CompletionOutput]]:
        """``params.n`` finished samples (the best ``n`` of ``best_of`` by mean log-probability).

        Given a list of prompts (texts, or token-id lists), they run together and the result is
        one list of samples per prompt.
        """
        params = params or SamplingParams()
        many = _is_prompt_list(prompt)
        if kw.get("session_id") is not None:
            if many:
                raise ValueError("session_id continues one conversation: give one prompt")
            streams = [self.submit(prompt, params, **kw)]  # type: ignore[arg-type]
        else:
            prompts = list(prompt) if many else [prompt]  # type: ignore[arg-type]
            ids = [self.check(p, params) for p in prompts]  # tokenized once; all checked before any is queued
            streams = [self.submit(i, params, **kw) for i in ids]
        try:
            outs = [fold(s, samples=params.samples, n=params.n, logprobs=params.logprobs) for s in streams]
        finally:
            for s in streams:
                s.close()
        return outs if many else outs[0]

    def chat(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
             tools: Sequence[Mapping[str, Any]] | None = None) -> list[CompletionOutput]:
        """``generate`` on the chat template's rendering of ``messages`` (raw text out; see
        ``create_chat_completion`` for parsed tool calls and OpenAI's shape)."""
        out = self.generate(self.apply_chat_template(messages, tools=tools), params)
        return out  # type: ignore[return-value]

    def memory(self) -> dict[str, Any]:
        """Bytes held: the model's (mapped and repacked weights, the KV pool used and free, scratch) and
        each KV cache tier's (blocks the prefix cache keeps in the pool, the RAM tier)."""
        m = dict(self.model.memory())
        block = m["kv_block_bytes"]
        free = self.model.kv_free_blocks
        m["kv_free_bytes"] = free * block
        cache = self.prefix_cache
        m["tiers"] = {
            "pool_cached_blocks": cache.reclaimable_blocks() if cache is not None else 0,
            "pool_cached_bytes": (cache.reclaimable_blocks() if cache is not None else 0) * block,
            "ram_blocks": len(cache.ram) if cache is not None and cache.ram is not None else 0,
            "ram_bytes": cache.ram.bytes if cache is not None and cache.ram is not None else 0,
            "ram_max_bytes": cache.ram.max_bytes if cache is not None and cache.ram is not None else 0,
        }
        return m

    def close(self) -> None:
        """Stop the engine thread (unfinished requests end with ``EngineClosed``)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:  # interpreter shutdown
                pass

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- OpenAI-shaped API ---------------------------------------------------------------

    def create_completion(self, prompt: Prompt, **fields: Any) -> Any:
        """OpenAI ``/v1/completions``: a ``Completion`` dict, or with ``stream=True`` an iterator of them."""
        return create_completion(self, prompt, **fields)

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
                               | None = None, *, session_id: str | None = None, **fields: Any) -> Any:
        """OpenAI ``/v1/chat/completions``: a ``ChatCompletion`` dict, or with ``stream=True`` chunk dicts.

        With ``session_id``, ``messages`` are the conversation's new messages: the session's history goes
        before them, and the answer joins it."""
        if session_id is None:
            return create_chat_completion(self, messages, tools=tools, **fields)
        if fields.get("n", 1) not in (None, 1):
            raise ValueError("a session continues with one answer: n must be 1 with session_id")
        s = self.sessions.get(session_id) or Session(session_id)
        history = s.messages + [dict(m) for m in messages]
        out = create_chat_completion(self, history, tools=tools, **fields)
        if not fields.get("stream"):
            self._chat_session_answer(session_id, history, out["choices"][0]["message"])
            return out
        return self._chat_session_stream(session_id, history, out)

    def _chat_session_stream(self, session_id: str, history: list[dict[str, Any]], chunks: Any) -> Any:
        answer: dict[str, Any] = {"role": "assistant", "content": ""}
        for chunk in chunks:
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {})
                answer["content"] += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    calls = answer.setdefault("tool_calls", [])
                    while len(calls) <= call["index"]:
                        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                    c = calls[call["index"]]
                    c["id"] = call.get("id") or c["id"]
                    fn = call.get("function") or {}
                    c["function"]["name"] += fn.get("name") or ""
                    c["function"]["arguments"] += fn.get("arguments") or ""
            yield chunk
        self._chat_session_answer(session_id, history, answer)

    def _chat_session_answer(self, session_id: str, history: list[dict[str, Any]], message: Mapping[str, Any]) -> None:
        turn = {k: v for k, v in message.items() if v is not None}
        if not turn.get("content") and turn.get("tool_calls"):
            turn["content"] = ""
        history = history + [turn]
        tokens = self.tokenize(self.apply_chat_template(history, add_generation_prompt=False), special=True)
        self.sessions.update(session_id, tokens, history)

    def __repr__(self) -> str:
        return f"LLM({self.model.path!r}, n_ctx={self.model.n_ctx})"


def _is_prompt_list(prompt: Any) -> bool:
    """A list of prompts (texts or token-id lists), as opposed to one prompt of token ids."""
    return (isinstance(prompt, Sequence) and not isinstance(prompt, str | bytes) and len(prompt) > 0
            and all(isinstance(p, str) or (isinstance(p, Sequence) and not isinstance(p, bytes)) for p in prompt))


def _env_number(name: str, value: Any, kind: type) -> Any:
    """``value``, or the environment variable ``name`` parsed as ``kind`` (a clear error if it is not one)."""
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"${name} must be a {kind.__name__}, got {raw!r}") from None
