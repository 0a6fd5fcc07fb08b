"""``nlm serve`` with the real model and the official ``openai`` client: a completion, a chat with a tool
call, and the same answer streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from test_server import KEY, Live

from nlm_native import LLM
from nlm_native.server import ServerConfig, create_app

from real_model import real_model_path

pytestmark = pytest.mark.real_model

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with LLM(real_model_path(), n_threads=2, n_ctx=2048) as llm, \
            Live(create_app(ServerConfig(api_keys=[KEY]), llm)) as live:
        yield openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_completion_chat_tools_and_streaming(client: openai.OpenAI) -> None:
    (model,) = [m.id for m in client.models.list()]
    r = client.completions.create(model=model, prompt="def add(a, b):\n    return", max_tokens=4, temperature=0)
    assert r.choices[0].text.strip().startswith("a + b")
    msgs = [{"role": "user", "content": "What is the weather in Oslo right now?"}]
    t = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER], tool_choice="required",
                                       max_tokens=60, temperature=0)
    (call,) = t.choices[0].message.tool_calls or []
    assert t.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    q = [{"role": "user", "content": "Name three sorting algorithms, briefly."}]
    whole = client.chat.completions.create(model=model, messages=q, max_tokens=40, temperature=0.7, seed=11)
    parts = client.chat.completions.create(model=model, messages=q, max_tokens=40, temperature=0.7, seed=11,
                                           stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole.choices[0].message.content
