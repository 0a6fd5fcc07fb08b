"""OpenAI's completions and chat completions over an :class:`~nlm_native.LLM`.

Request fields are OpenAI's names (plus llama.cpp's / vLLM's sampling extensions
``top_k``, ``min_p``, ``repeat_penalty``, ``repeat_last_n``, ``stop_token_ids``,
``ignore_eos``); a field this package does not implement raises ``ValueError`` naming it
instead of being silently ignored. Responses are the ``TypedDict`` shapes of
:mod:`nlm_native.openai_types`; ``stream=True`` returns an iterator of chunk dicts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import StreamChunk, TokenFilter, TokenLogprob
from .json_prefix import JsonPrefix
from .openai_types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChatMessage,
    Completion,
    CompletionLogprobs,
    Usage,
)
from .sampling import MAX_TOP_LOGPROBS, SamplingParams
from .stops import StopMatcher
from .tools import ToolCall, check_tools, parse_tool_calls, strip_tool_calls, tool_names

if TYPE_CHECKING:
    from .generation import LLM
    from .tokenizer import Tokenizer

_SAMPLING_FIELDS = {
    "max_tokens", "temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
    "stop", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "stop_token_ids", "ignore_eos", "best_of",
}
_ACCEPTED_METADATA = {"model", "user", "stream", "stream_options"}  # read, but they do not change the output
COMPLETION_FIELDS = _SAMPLING_FIELDS | _ACCEPTED_METADATA | {"logprobs", "echo", "suffix"}
CHAT_FIELDS = (_SAMPLING_FIELDS | _ACCEPTED_METADATA) - {"best_of"} | {
    "logprobs", "top_logprobs", "max_completion_tokens", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "response_format", "chat_template",
}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for the legacy completions API


def _check_fields(fields: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{where}: unsupported field(s) {', '.join(map(repr, unknown))}; "
                         f"supported: {', '.join(sorted(allowed))}")


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _logit_bias(bias: Any) -> dict[int, float]:
    if bias is None:
        return {}
    if not isinstance(bias, Mapping):
        raise ValueError("logit_bias must map token ids to biases")
    out = {}
    for k, v in bias.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias: key {k!r} is not a token id") from None
        out[tid] = v
    return out


def sampling_params(fields: Mapping[str, Any], *, max_tokens_default: int | None, logprobs: bool,
                    top_logprobs: int) -> SamplingParams:
    """Map OpenAI request fields to :class:`SamplingParams` (validated there)."""
    kw: dict[str, Any] = {k: fields[k] for k in _SAMPLING_FIELDS if k in fields and fields[k] is not None}
    kw["max_tokens"] = fields.get("max_tokens", max_tokens_default)
    kw["stop"] = tuple(_stop_list(fields.get("stop")))
    kw["logit_bias"] = _logit_bias(fields.get("logit_bias"))
    stop_ids = fields.get("stop_token_ids")
    if stop_ids is not None and (isinstance(stop_ids, str | bytes) or not isinstance(stop_ids, Sequence)):
        raise ValueError(f"stop_token_ids must be a list of token ids, got {stop_ids!r}")
    kw["stop_token_ids"] = tuple(stop_ids or ())
    kw["logprobs"], kw["top_logprobs"] = logprobs, top_logprobs
    params = SamplingParams(**kw)
    if params.temperature > 2:
        raise ValueError(f"temperature must be in [0, 2], got {params.temperature!r}")
    return params


def _ids() -> str:
    return uuid.uuid4().hex[:24]


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _generated(token_ids: list[int], stop_reason: str | int | None) -> int:
    """Tokens generated: those returned, plus the end-of-generation / stop token that ended it."""
    return len(token_ids) + isinstance(stop_reason, int)


def _include_usage(fields: Mapping[str, Any]) -> bool:
    opts = fields.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, Mapping) or set(opts) - {"include_usage"}:
        raise ValueError("stream_options supports only {'include_usage': bool}")
    if not fields.get("stream"):
        raise ValueError("stream_options is only allowed with stream=True")
    include = opts.get("include_usage", False)
    if not isinstance(include, bool):
        raise ValueError(f"stream_options.include_usage must be true or false, got {include!r}")
    return include


def _token_text(tok: Tokenizer, tid: int) -> str:
    return tok.token_bytes(tid).decode("utf-8", errors="replace")


# --- completions ---------------------------------------------------------------------------


def _top_dict(top: list[tuple[int, float]], tok: Tokenizer) -> dict[str, float]:
    """OpenAI's legacy shape keys alternatives by text; of tokens with the same text the likeliest stays."""
    out: dict[str, float] = {}
    for t, lp in top:
        out.setdefault(_token_text(tok, t), lp)
    return out


def _completion_logprobs(entries: list[TokenLogprob], tok: Tokenizer, offset: int) -> CompletionLogprobs:
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e.top, tok) for e in entries],
        "text_offset": [e.text_offset + offset for e in entries],
    }


def _fim_prompt(llm: LLM, prompt: str, suffix: str) -> str:
    vocab = llm.tokenizer.vocab
    for pre, suf, mid in (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<PRE>", "<SUF>", "<MID>"),
                          ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")):
        if pre in vocab and suf in vocab and mid in vocab:
            return f"{pre}{prompt}{suf}{suffix}{mid}"
    raise ValueError(f"suffix (fill-in-the-middle) needs FIM tokens, which {llm.model_name} does not have")


def create_completion(llm: LLM, prompt: Any, **fields: Any) -> Completion | Iterator[Completion]:
    _check_fields(fields, COMPLETION_FIELDS, "create_completion")
    lp = fields.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_COMPLETION_LOGPROBS):
        raise ValueError(f"logprobs must be an integer in [0, {MAX_COMPLETION_LOGPROBS}], got {lp!r}")
    params = sampling_params(fields, max_tokens_default=16, logprobs=lp is not None, top_logprobs=lp or 0)
    echo = bool(fields.get("echo"))
    if echo and lp is not None:
        raise ValueError("echo together with logprobs (log-probabilities of the prompt) is not supported")
    prompts = _prompt_list(prompt)
    echoes = [(p if isinstance(p, str) else llm.detokenize(p)) if echo else "" for p in prompts]
    suffix = fields.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise ValueError("suffix must be a string")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("suffix needs text prompts")
        prompts = [_fim_prompt(llm, p, suffix) for p in prompts]
    ids_list = [llm.prompt_ids(p) for p in prompts]
    for ids in ids_list:  # every prompt is checked before anything is generated or streamed
        llm.check(ids, params)
    if fields.get("stream") and params.samples > params.n:
        raise ValueError("best_of > n cannot be streamed: the best samples are known only at the end")
    head = {"id": "cmpl-" + _ids(), "object": "text_completion", "created": int(time.time()),
            "model": fields.get("model") or llm.model_name}
    if fields.get("stream"):
        return _stream_completion(llm, ids_list, echoes, params, head, _include_usage(fields))
    _include_usage(fields)
    choices = []
    n_completion = 0
    for pi, ids in enumerate(ids_list):
        for out in llm.generate(ids, params):
            n_completion += _generated(out.token_ids, out.stop_reason)
            choices.append({
                "text": echoes[pi] + out.text,
                "index": pi * params.n + out.index,
                "logprobs": _completion_logprobs(out.logprobs, llm.tokenizer, len(echoes[pi]))
                if out.logprobs is not None else None,
                "finish_reason": out.finish_reason,
            })
    return {**head, "choices": choices, "usage": _usage(sum(map(len, ids_list)), n_completion)}  # type: ignore[typeddict-item]


def _prompt_list(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, int | np.integer) and not isinstance(t, bool)
                                                       for t in prompt):
        return [list(prompt)]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) or (isinstance(p, Sequence) and p)
                                                       for p in prompt):
        return [p if isinstance(p, str) else list(p) for p in prompt]
    raise ValueError("prompt must be a string, a list of token ids, or a list of those")


def _stream_completion(llm: LLM, ids_list: list[list[int]], echoes: list[str], params: SamplingParams,
                       head: dict[str, Any], include_usage: bool) -> Iterator[Completion]:
    n_completion = 0
    for pi, ids in enumerate(ids_list):
        if echoes[pi]:
            for j in range(params.n):
                yield {**head, "choices": [{"text": echoes[pi], "index": pi * params.n + j, "logprobs": None,
                                            "finish_reason": None}]}  # type: ignore[misc]
        stream = llm.stream(ids, params)
        try:
            for c in stream:
                n_completion += _generated(c.token_ids, c.stop_reason)
                logprobs = _completion_logprobs(c.logprobs, llm.tokenizer, len(echoes[pi])) \
                    if c.logprobs is not None else None
                yield {**head, "choices": [{"text": c.text, "index": pi * params.n + c.index, "logprobs": logprobs,
                                            "finish_reason": c.finish_reason}]}  # type: ignore[misc]
        finally:  # closed early (a client went away): the generation's KV blocks are freed now
            stream.close()
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(sum(map(len, ids_list)), n_completion)}  # type: ignore[misc]


# --- chat completions ------------------------------------------------------------------------


class JsonFilter(TokenFilter):
    """Only tokens that keep the output a prefix of a JSON object; done when the object closes."""

    MAX_WHITESPACE = 16  # consecutive whitespace bytes (indentation), so no run of newlines can go on and on

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._state = JsonPrefix(top_level_object=True, max_whitespace=self.MAX_WHITESPACE)
        self._started = False
        self._cache: dict[int, JsonPrefix | None] = {}

    def allowed(self, token_id: int) -> bool:
        if token_id not in self._cache:
            b = self._tok.token_bytes(token_id)
            ok = b and (self._started or b[:1] == b"{")  # the reply opens with its object, as OpenAI's do
            self._cache[token_id] = self._state.advance(b) if ok else None
        return self._cache[token_id] is not None

    def accept(self, token_id: int) -> None:
        nxt = self._cache.get(token_id) if token_id in self._cache else self._state.advance(
            self._tok.token_bytes(token_id))
        if nxt is None:
            raise ValueError(f"token {token_id} does not continue the JSON output")
        self._state = nxt
        self._started = True
        self._cache = {}

    @property
    def done(self) -> bool:
        return self._state.complete


def _chat_logprobs(entries: list[TokenLogprob], tok: Tokenizer) -> ChatLogprobs:
    def top(t: int, lp: float) -> dict[str, Any]:
        b = tok.token_bytes(t)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
                         "top_logprobs": [top(t, lp) for t, lp in e.top]} for e in entries]}


class _ChatRequest:
    """A chat request's fields, checked and turned into a prompt and sampling parameters."""

    def __init__(self, llm: LLM, messages: Any, tools: Any, fields: Mapping[str, Any]) -> None:
        _check_fields(fields, CHAT_FIELDS, "create_chat_completion")
        self.llm = llm
        lp = fields.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise ValueError(f"logprobs must be true or false, got {lp!r}")
        top = fields.get("top_logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}")
        if top and not lp:
            raise ValueError("top_logprobs needs logprobs=true")
        fields = dict(fields)
        if fields.get("max_completion_tokens") is not None:
            if fields.get("max_tokens") is not None:
                raise ValueError("give max_tokens or max_completion_tokens, not both")
            fields["max_tokens"] = fields["max_completion_tokens"]
        self.params = sampling_params(fields, max_tokens_default=None, logprobs=bool(lp), top_logprobs=top or 0)
        self.include_usage = _include_usage(fields)
        self.model = fields.get("model") or llm.model_name
        self.legacy = False
        if fields.get("functions") is not None:
            if tools is not None:
                raise ValueError("give tools or functions (legacy), not both")
            funcs = fields["functions"]
            if isinstance(funcs, str | bytes) or not isinstance(funcs, Sequence):
                raise ValueError("functions must be a list of function definitions")
            tools = [{"type": "function", "function": f} for f in funcs]
            self.legacy = True
        self.tools = check_tools(tools)
        self.choice = self._tool_choice(fields)
        self.parallel = fields.get("parallel_tool_calls", True)
        if not isinstance(self.parallel, bool):
            raise ValueError("parallel_tool_calls must be true or false")
        self.json_mode = self._response_format(fields.get("response_format"))
        if self.json_mode and self.choice not in ("none", None):
            raise ValueError("response_format json_object cannot be combined with tools")
        active_tools = self.tools if self.choice != "none" else None
        self.prefix = self._forced_prefix()
        text = llm.apply_chat_template(messages, tools=active_tools, add_generation_prompt=True,
                                       chat_template=fields.get("chat_template"))
        self.prompt_ids = llm.tokenize(text + self.prefix, special=True)

    def _tool_choice(self, fields: Mapping[str, Any]) -> str | dict[str, Any] | None:
        choice = fields.get("function_call") if self.legacy else fields.get("tool_choice")
        if not self.tools:
            if choice not in (None, "none"):
                raise ValueError("tool_choice needs tools")
            return None
        if choice is None:
            return "auto"
        if choice in ("none", "auto", "required"):
            return choice
        if isinstance(choice, Mapping):
            fn = choice if self.legacy else choice.get("function")
            name = fn.get("name") if isinstance(fn, Mapping) else None
            if not isinstance(name, str):
                raise ValueError("tool_choice must be {'type': 'function', 'function': {'name': ...}}"
                                 if not self.legacy else "function_call must be {'name': ...}")
            if name not in tool_names(self.tools):
                raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")
            return {"name": name}
        raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}")

    def _forced_prefix(self) -> str:
        """For 'required' / a named function, the start of the call is written for the model."""
        if self.choice not in ("required",) and not isinstance(self.choice, dict):
            return ""
        tpl = self.llm.chat_template
        if tpl is None or not tpl.hermes_tool_calls:
            raise ValueError("tool_choice 'required' or a named function needs a chat template with "
                             "<tool_call> tool calls (Qwen 2.5 / Hermes style)")
        if isinstance(self.choice, dict):
            return '<tool_call>\n{"name": "' + self.choice["name"] + '", "arguments": '
        return '<tool_call>\n{"name": "'

    @staticmethod
    def _response_format(rf: Any) -> bool:
        if rf is None:
            return False
        kind = rf.get("type") if isinstance(rf, Mapping) else None
        if kind == "text":
            return False
        if kind == "json_object":
            return True
        if kind == "json_schema":
            raise ValueError("response_format json_schema is not supported (json_object is)")
        raise ValueError(f"response_format must be {{'type': 'text' | 'json_object'}}, got {rf!r}")

    def make_filter(self) -> JsonFilter:
        return JsonFilter(self.llm.tokenizer)

    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    def message(self, text: str) -> tuple[ChatMessage, list[ToolCall]]:
        """The assistant message for the generated text (tool calls parsed out when tools are on)."""
        if not self.parses_tools:
            return {"role": "assistant", "content": text}, []
        full = self.prefix + text
        content, calls = parse_tool_calls(full, tool_names(self.tools))
        if not calls:
            return {"role": "assistant", "content": full}, []
        if not self.parallel:
            calls = calls[:1]
        msg: ChatMessage = {"role": "assistant", "content": content}
        if self.legacy:
            msg["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        else:
            msg["tool_calls"] = [c.openai() for c in calls]  # type: ignore[misc]
        return msg, calls

    def finish_reason(self, reason: str, calls: list[ToolCall]) -> str:
        if calls:
            return "function_call" if self.legacy else "tool_calls"
        return reason


def _closing(outer: Iterator[Any], inner: Iterator[Any]) -> Iterator[Any]:
    """``outer``, and when it is closed early (a client went away), ``inner`` is closed too."""
    try:
        yield from outer
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


def create_chat_completion(llm: LLM, messages: Any, *, tools: Any = None,
                           **fields: Any) -> ChatCompletion | Iterator[ChatCompletionChunk]:
    req = _ChatRequest(llm, messages, tools, fields)
    head = {"id": "chatcmpl-" + _ids(), "created": int(time.time()), "model": req.model}
    flt = req.make_filter if req.json_mode else None
    if fields.get("stream"):
        # started here, so that a bad request raises now rather than after the first chunk
        stream = llm.stream(req.prompt_ids, req.params, make_filter=flt)
        return _closing(_stream_chat(req, head, stream), stream)
    choices = []
    n_completion = 0
    for out in llm.generate(req.prompt_ids, req.params, make_filter=flt):
        n_completion += _generated(out.token_ids, out.stop_reason)
        msg, calls = req.message(out.text)
        choices.append({"index": out.index, "message": msg,
                        "logprobs": _chat_logprobs(out.logprobs, llm.tokenizer) if out.logprobs is not None else None,
                        "finish_reason": req.finish_reason(out.finish_reason, calls)})
    return {**head, "object": "chat.completion", "choices": choices,  # type: ignore[typeddict-item]
            "usage": _usage(len(req.prompt_ids), n_completion)}


def _call_start(body: str) -> str:
    """Whether text (leading whitespace stripped) opens a tool call: "yes", "maybe" (too short to tell) or "no"."""
    for opener in ("<tool_call>", "<|python_tag|>"):
        if body.startswith(opener):
            return "yes"
        if opener.startswith(body):
            return "maybe"
    if body[:1] in ("{", "["):
        return "yes"
    if body.startswith("```"):
        header, nl, rest = body.partition("\n")
        if not nl:
            return "maybe"
        rest = rest.lstrip()
        if header.strip("` ").lower() in ("json", "") and not rest:
            return "maybe"
        return "yes" if rest[:1] in ("{", "[") else "no"
    return "maybe" if "```".startswith(body) else "no"


class _ToolGate:
    """Streams content until a tool call may be starting; from there on holds the text for parsing.

    A reply that opens like a call (``<tool_call>``, ``{``, a fence around JSON) is held
    whole; otherwise text streams, up to a ``<tool_call>`` appearing later (matched like a
    stop string, so a tag split across tokens is caught).
    """

    _TAG = "<tool_call>"

    def __init__(self, prefix: str) -> None:
        self.text = prefix
        self.holding = bool(prefix)  # the rest is held for parsing
        self.decided = bool(prefix)  # the start was classified
        self._tag = StopMatcher([self._TAG])

    @property
    def released(self) -> int:
        return self._tag.released

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.holding:
            return ""
        if not self.decided:
            body = self.text.lstrip()
            start = _call_start(body) if body else "maybe"
            if start == "maybe":
                return ""
            self.decided = True
            if start == "yes":
                self.holding = True
                return ""
            delta = self.text  # the start, held while undecided, goes out now
        out, self.holding = self._tag.feed(delta)
        return out

    def rest(self) -> str:
        return self.text[self.released:]

    def held_content(self) -> str:
        """Of the held text, what is not tool calls (text around ``<tool_call>`` blocks, as the full parse keeps it)."""
        held = self.text[self.released:]
        return strip_tool_calls(held).strip() if self._TAG in held else ""


def _stream_chat(req: _ChatRequest, head: dict[str, Any], stream: Iterator[StreamChunk]
                 ) -> Iterator[ChatCompletionChunk]:
    llm = req.llm
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: ChatLogprobs | None = None) -> ChatCompletionChunk:
        return {**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,  # type: ignore[misc]
                                     "finish_reason": finish}]}

    n = req.params.n
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    gates = [_ToolGate(req.prefix) for _ in range(n)] if req.parses_tools else None
    n_completion = 0
    c: StreamChunk
    for c in stream:
        n_completion += _generated(c.token_ids, c.stop_reason)
        lps = _chat_logprobs(c.logprobs, llm.tokenizer) if c.logprobs else None
        text = gates[c.index].feed(c.text) if gates else c.text
        if text or lps:
            yield chunk(c.index, {"content": text} if text else {}, None, lps)
        if c.finish_reason is None:
            continue
        reason = c.finish_reason
        if gates:
            gate = gates[c.index]
            _, calls = req.message(gate.text[len(req.prefix):]) if gate.holding else (None, [])
            if calls:
                reason = req.finish_reason(reason, calls)
                after = gate.held_content()
                if after:
                    yield chunk(c.index, {"content": after})
                if req.legacy:
                    yield chunk(c.index, {"function_call": {"name": calls[0].name,
                                                            "arguments": calls[0].arguments}})
                else:
                    yield chunk(c.index, {"tool_calls": [tc.openai(k) for k, tc in enumerate(calls)]})
            else:
                rest = gate.rest()
                if rest:
                    yield chunk(c.index, {"content": rest})
        yield chunk(c.index, {}, reason)
    if req.include_usage:
        yield {**base, "choices": [], "usage": _usage(len(req.prompt_ids), n_completion)}  # type: ignore[misc]
