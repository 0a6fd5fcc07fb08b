"""Chat templates: the model's ``tokenizer.chat_template`` rendered in a Jinja2 sandbox.

As Hugging Face does it: an immutable sandboxed environment with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that keeps
non-ASCII text, and the ``raise_exception`` / ``strftime_now`` globals templates use.
Messages arrive in OpenAI's shape and are normalised first: text parts joined, the
``developer`` role read as ``system``, tool-call arguments given as JSON strings turned
into objects (templates serialise them themselves).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ChatTemplateError(ValueError):
    """The template is missing, does not compile, or failed while rendering."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template with the special tokens it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        if not isinstance(source, str):
            raise ChatTemplateError(f"the chat template must be a string, got {type(source).__name__}")
        if not source.strip():
            raise ChatTemplateError("the chat template is empty")
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template does not compile: {e}") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @property
    def hermes_tool_calls(self) -> bool:
        """The template asks for tool calls as ``<tool_call>{json}</tool_call>`` (Qwen 2.5, Hermes)."""
        return "<tool_call>" in self.source

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        msgs = normalize_messages(messages)
        ctx: dict[str, Any] = {
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            # as Hugging Face passes them: defined, None when absent
            "tools": [dict(t) for t in tools] if tools else None,
            "documents": None,
            **extra,
        }
        try:
            return self._template.render(**ctx)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template failed to render: {e}") from None
        except Exception as e:  # anything a template can raise (ZeroDivisionError, RecursionError, ...)
            raise ChatTemplateError(f"chat template failed to render these messages: {type(e).__name__}: {e}") from None


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check OpenAI-shaped messages and bring them into the shape templates expect."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}")
        msg = dict(m)
        msg["role"] = "system" if role == "developer" else role
        msg["content"] = _content_text(m.get("content"), i, allow_none=role == "assistant")
        if role == "assistant" and msg["content"] is None and not m.get("tool_calls") and not m.get("function_call"):
            raise ValueError(f"messages[{i}]: an assistant message needs content or tool_calls")
        if m.get("function_call"):  # legacy: one function call
            msg.setdefault("tool_calls", [{"type": "function", "function": m["function_call"]}])
            msg.pop("function_call")
        if msg.get("tool_calls"):
            calls = msg["tool_calls"]
            if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
                raise ValueError(f"messages[{i}].tool_calls must be a list")
            msg["tool_calls"] = [_tool_call_for_template(tc, i, j) for j, tc in enumerate(calls)]
        if role == "function":  # legacy function result
            msg["role"] = "tool"
        out.append(msg)
    return out


def _content_text(content: Any, i: int, *, allow_none: bool) -> str | None:
    if content is None:
        if allow_none:
            return None
        raise ValueError(f"messages[{i}].content is missing")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(f"messages[{i}].content[{j}]: only text parts are supported, got {kind!r}")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"messages[{i}].content must be a string or a list of text parts")


def _tool_call_for_template(tc: Any, i: int, j: int) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    if not isinstance(tc, Mapping):
        raise ValueError(f"{where} must be an object")
    call = dict(tc)
    if not isinstance(call.get("function"), Mapping):
        raise ValueError(f"{where}.function must be an object with name and arguments")
    fn = dict(call["function"])
    if not isinstance(fn.get("name"), str):
        raise ValueError(f"{where}: a call needs function.name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"{where}: arguments of {fn['name']!r} are not JSON") from None
    fn["arguments"] = args
    call["function"] = fn
    # some templates read name/arguments at the top level of the call
    call.setdefault("name", fn["name"])
    call.setdefault("arguments", args)
    return call
