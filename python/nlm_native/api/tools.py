"""Tools: OpenAI tool definitions checked on the way in, tool calls parsed out of generated text.

Formats recognised in the text a model writes:

* Qwen 2.5 / Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or more,
  possibly after some text; a missing closing tag at the very end is tolerated);
* Llama 3: ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``, several
  separated by ``;``;
* a plain JSON object (or list of objects) with ``name`` and ``arguments``/``parameters``, or
  OpenAI's own ``{"type": "function", "function": {...}}`` shape, also inside a Markdown code
  fence (small models often answer that way).

Anything malformed (bad JSON, no name, a name that is not one of the declared tools,
arguments that are not an object) leaves the whole text as plain content: never an exception.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "call_" + uuid.uuid4().hex[:24]

    def openai(self, index: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": "function",
                             "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            d = {"index": index, **d}
        return d


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Validate OpenAI ``tools`` (``[{"type": "function", "function": {"name", ...}}]``)."""
    if tools is None:
        return []
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise ValueError("tools must be a list of {'type': 'function', 'function': {...}} objects")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping) or t.get("type", "function") != "function":
            raise ValueError(f"tools[{i}] must be an object with type 'function'")
        fn = t.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not _NAME.fullmatch(fn["name"]):
            raise ValueError(f"tools[{i}].function needs a name of 1-64 letters, digits, '_' or '-' (OpenAI's rule)")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON Schema object")
        out.append({"type": "function", "function": dict(fn)})
    return out


def strip_tool_calls(text: str) -> str:
    """The text with its ``<tool_call>...</tool_call>`` blocks removed."""
    return _HERMES.sub("", text)


def tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in tools}


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """Split generated text into (content, tool calls). No calls found: ``(text, [])``.

    ``names``: the declared tools; a call naming any other function counts as malformed.
    """
    if "<tool_call>" in text:
        calls = []
        for m in _HERMES.finditer(text):
            call = _one_call(_loads(m.group(1)), names)
            if call is None:
                return text, []
            calls.append(call)
        content = _HERMES.sub("", text).strip()
        return (content or None), calls
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    if not body.startswith(("{", "[")):
        return text, []
    value = _loads(body)
    if value is None and ";" in body:  # Llama 3: several calls separated by ';'
        value = _json_sequence(body, ";")
    items = value if isinstance(value, list) else [value]
    calls = [_one_call(v, names) for v in items]
    if not calls or any(c is None for c in calls):
        return text, []
    return None, [c for c in calls if c is not None]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _loads(s: str) -> Any:
    """Strict JSON (no NaN / Infinity), or None; never raises."""
    try:
        return _DECODER.decode(s)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN, over-long integers, deep nesting
        return None


def _json_sequence(s: str, sep: str) -> list[Any] | None:
    """Values separated by ``sep`` (and whitespace), each parsed in full; None if anything else is there."""
    out: list[Any] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        try:
            value, i = _DECODER.raw_decode(s, i)
        except (ValueError, RecursionError):
            return None
        out.append(value)
        while i < n and s[i].isspace():
            i += 1
        if i == n:
            return out
        if s[i] != sep:
            return None
        i += 1
        if not s[i:].strip():
            return out  # a trailing separator


def _one_call(obj: Any, names: set[str] | None) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI's shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name or (names is not None and name not in names):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        parsed = _loads(args) if args.strip() else {}
        if not isinstance(parsed, dict):
            return None
        args = parsed
    if not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))
