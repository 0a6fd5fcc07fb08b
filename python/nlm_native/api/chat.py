"""OpenAI ``/v1/chat/completions`` over a :class:`~nlm_native.api.backend.Backend` (an ``LLM``):
messages through the chat template, tools, structured output (``response_format`` json_object /
json_schema, ``grammar``).

One builder: :func:`_chunks` turns the engine's stream into the streamed response's chunks; the
whole response is :func:`_fold` of those chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..engine import StreamChunk, TokenLogprob
from ..sampling import MAX_TOP_LOGPROBS, Grammar
from ..text import StopMatcher, Tokenizer
from .backend import Backend
from .fields import (
    ACCEPTED_METADATA,
    ENGINE_FIELDS,
    SAMPLING_FIELDS,
    cached_tokens,
    check_fields,
    engine_options,
    generated,
    include_usage,
    new_id,
    now,
    sampling_params,
    usage,
)
from .tools import ToolCall, check_tools, parse_tool_calls, strip_tool_calls, tool_names
from .types import ChatCompletion, ChatCompletionChunk, ChatLogprobs, ChatMessage

CHAT_FIELDS = (SAMPLING_FIELDS | ACCEPTED_METADATA | ENGINE_FIELDS) - {"best_of"} | {
    "logprobs", "top_logprobs", "max_completion_tokens", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "response_format", "chat_template", "grammar",
}


def _chat_logprobs(entries: list[TokenLogprob], tok: Tokenizer) -> ChatLogprobs:
    def top(t: int, lp: float) -> dict[str, Any]:
        b = tok.token_bytes(t)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
                         "top_logprobs": [top(t, lp) for t, lp in e.top]} for e in entries]}


_TAG, _END_TAG = "<tool_call>", "</tool_call>"


def _response_schema(rf: Any) -> dict[str, Any] | None:
    """The JSON Schema ``response_format`` asks for (json_object: any object), or None for text."""
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}")
        schema = spec.get("schema", {})
        if not isinstance(schema, Mapping):
            raise ValueError("response_format json_schema.schema must be a JSON Schema object")
        return dict(schema)
    raise ValueError(f"response_format must be {{'type': 'text' | 'json_object' | 'json_schema'}}, got {rf!r}")


def _custom_grammar(g: Any) -> Grammar | None:
    """``grammar``: a Lark or GBNF grammar text, or {"type": "lark" | "gbnf" | "regex", "value": text}."""
    if g is None:
        return None
    if isinstance(g, str):
        return Grammar.lark(g)
    if isinstance(g, Mapping) and g.get("type") in ("lark", "gbnf", "regex") and isinstance(g.get("value"), str):
        return Grammar.regex(g["value"]) if g["type"] == "regex" else Grammar.lark(g["value"])
    raise ValueError("grammar must be a Lark or GBNF grammar text, or {'type': 'lark' | 'gbnf' | 'regex', "
                     "'value': text}")


class _ChatRequest:
    """A chat request's fields, checked and turned into a prompt and sampling parameters."""

    def __init__(self, llm: Backend, messages: Any, tools: Any, fields: Mapping[str, Any]) -> None:
        check_fields(fields, CHAT_FIELDS, "create_chat_completion")
        self.llm = llm
        lp = fields.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise ValueError(f"logprobs must be true or false, got {lp!r}")
        top = fields.get("top_logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int)):
            raise ValueError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}")
        fields = dict(fields)
        if fields.get("max_completion_tokens") is not None:
            if fields.get("max_tokens") is not None:
                raise ValueError("give max_tokens or max_completion_tokens, not both")
            fields["max_tokens"] = fields["max_completion_tokens"]
        self.include_usage = include_usage(fields)
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
        response = _response_schema(fields.get("response_format"))
        custom = _custom_grammar(fields.get("grammar"))
        if response is not None and custom is not None:
            raise ValueError("give response_format or grammar, not both")
        active_tools = self.tools if self.choice != "none" else None
        self.prefix = self._forced_prefix()
        grammar = self._grammar(response, custom)
        self.params = sampling_params(fields, max_tokens_default=None, logprobs=bool(lp), top_logprobs=top or 0,
                                      grammar=grammar)
        self.engine_options = engine_options(fields)
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

    @property
    def forced(self) -> bool:
        """The reply must be a tool call ('required' or a named function)."""
        return self.choice == "required" or isinstance(self.choice, dict)

    def _hermes(self, what: str) -> None:
        tpl = self.llm.chat_template
        if tpl is None or not tpl.hermes_tool_calls:
            raise ValueError(f"{what} needs a chat template with <tool_call> tool calls (Qwen 2.5 / Hermes style)")

    def _forced_prefix(self) -> str:
        """For 'required' / a named function, the call's opening tag is written for the model."""
        if not self.forced:
            return ""
        self._hermes("tool_choice 'required' or a named function")
        return _TAG + "\n"

    def _call_schema(self) -> dict[str, Any]:
        """JSON Schema of one call: {"name": one of the tools, "arguments": that tool's parameters}."""
        tools = self.tools
        if isinstance(self.choice, dict):
            tools = [t for t in tools if t["function"]["name"] == self.choice["name"]]
        variants = [{"type": "object", "properties": {
            "name": {"const": t["function"]["name"]},
            "arguments": t["function"].get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
        return variants[0] if len(variants) == 1 else {"anyOf": variants}

    def _grammar(self, response: dict[str, Any] | None, custom: Grammar | None) -> Grammar | None:
        """The constraint: a forced call's schema; JSON or a tool call (JSON mode with tools); or the
        response format / grammar asked for."""
        if self.forced:
            return Grammar.json_schema(self._call_schema())
        if response is not None and self.tools and self.choice == "auto":
            self._hermes("response_format together with tools")
            return Grammar.lark(
                "start: answer | call\n"
                f"answer: %json {json.dumps(response)}\n"
                f'call: {_TAG} "\\n" %json {json.dumps(self._call_schema())} "\\n" {_END_TAG}\n')
        if response is not None:
            return Grammar.json_schema(response)
        return custom

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


def create_chat_completion(llm: Backend, messages: Any, *, tools: Any = None,
                           **fields: Any) -> ChatCompletion | Iterator[ChatCompletionChunk]:
    req = _ChatRequest(llm, messages, tools, fields)
    streaming = bool(fields.get("stream"))
    head = {"id": new_id("chatcmpl-"), "created": now(), "model": req.model}
    # submitted here, so that a bad request raises now rather than at the first chunk
    stream = llm.submit(req.prompt_ids, req.params, **req.engine_options)
    chunks = _chunks(req, head, stream, with_usage=req.include_usage or not streaming)
    if streaming:
        return chunks
    return _fold(req, head, chunks)


def _fold(req: _ChatRequest, head: dict[str, Any], chunks: Iterator[ChatCompletionChunk]) -> ChatCompletion:
    """The whole response: the streamed deltas added up per choice."""
    choices: dict[int, dict[str, Any]] = {}
    use = None
    for ch in chunks:
        if not ch["choices"] and "usage" in ch:
            use = ch["usage"]
        for c in ch["choices"]:
            d = choices.setdefault(c["index"], {"content": [], "calls": None, "function_call": None,
                                                "logprobs": None, "finish_reason": None})
            delta = c["delta"]
            if delta.get("content"):
                d["content"].append(delta["content"])
            if "tool_calls" in delta:
                d["calls"] = [{k: v for k, v in tc.items() if k != "index"} for tc in delta["tool_calls"]]
            if "function_call" in delta:
                d["function_call"] = delta["function_call"]
            if c.get("logprobs"):
                d["logprobs"] = d["logprobs"] or {"content": []}
                d["logprobs"]["content"].extend(c["logprobs"]["content"])
            if c["finish_reason"] is not None:
                d["finish_reason"] = c["finish_reason"]
    out = []
    for i in sorted(choices):
        d = choices[i]
        text = "".join(d["content"])
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if d["calls"] is not None or d["function_call"] is not None:
            msg["content"] = text.strip() or None  # the text around the calls, as parse_tool_calls gives it
            if d["calls"] is not None:
                msg["tool_calls"] = d["calls"]
            else:
                msg["function_call"] = d["function_call"]
        lps = d["logprobs"] if req.params.logprobs else None
        if req.params.logprobs and lps is None:
            lps = {"content": []}
        out.append({"index": i, "message": msg, "logprobs": lps, "finish_reason": d["finish_reason"]})
    return {**head, "object": "chat.completion", "choices": out, "usage": use}  # type: ignore[typeddict-item]


def _chunks(req: _ChatRequest, head: dict[str, Any], stream: Iterator[StreamChunk], *, with_usage: bool
            ) -> Iterator[ChatCompletionChunk]:
    """The streamed response: the role, content deltas (tool calls held back and parsed), the finish, usage."""
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
    try:
        yield from _choices(req, stream, gates, chunk, counter := [0])
    finally:  # closed early (a client went away): the request is aborted, its blocks freed
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    n_completion = counter[0]
    if with_usage:
        yield {**base, "choices": [], "usage": usage(len(req.prompt_ids), n_completion,  # type: ignore[misc]
                                                     cached_tokens([stream]))}


def _choices(req: _ChatRequest, stream: Iterator[StreamChunk], gates: list[_ToolGate] | None,
             chunk: Callable[..., ChatCompletionChunk], counter: list[int]) -> Iterator[ChatCompletionChunk]:
    llm = req.llm
    for c in stream:
        counter[0] += generated(c.token_ids, c.stop_reason)
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

