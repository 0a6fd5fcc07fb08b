"""The served ``/openapi.json`` describes every endpoint and body, and schemathesis, generating bodies
from it (valid ones and broken ones), gets no 5xx from any operation of a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from test_server import KEY, Live

from nlm_native import LLM
from nlm_native.server import ServerConfig, create_app

AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 25  # per operation and mode (4x for the completions endpoints)


@pytest.fixture(scope="module")
def live(tiny_chat_path: Path) -> Iterator[Live]:
    # a short context keeps every generated request small: max_tokens beyond it end at its end
    with LLM(tiny_chat_path, n_ctx=256, block_tokens=8, model_name="tiny", max_waiting=64) as llm, \
            Live(create_app(ServerConfig(api_keys=[KEY], metrics_store="off", request_timeout=20), llm)) as s:
        yield s


@pytest.fixture(scope="module")
def api_schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(live.url + "/openapi.json", headers=AUTH)


def test_the_document_names_every_endpoint_and_body(live: Live) -> None:
    assert httpx.get(live.url + "/openapi.json").status_code == 401  # only /health is open
    doc = httpx.get(live.url + "/openapi.json", headers=AUTH).json()
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/health",
            "/metrics", "/admin/memory"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    chat = schemas["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False and "messages" in chat["required"]
    for name in ("messages", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "n", "stop",
                 "seed", "max_tokens", "max_completion_tokens", "stream", "stream_options", "priority"):
        assert name in chat["properties"], name
    assert "prompt" in schemas["CompletionRequest"]["required"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    err = doc["paths"]["/v1/completions"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/ErrorResponse"}


def test_bodies_are_checked_against_the_schema(live: Live) -> None:
    post = lambda path, body: httpx.post(live.url + path, json=body, headers=AUTH)  # noqa: E731
    for body, param in (({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "max_tokens": "8"}, "max_tokens"),
                        ({"prompt": "x", "temperature": True}, "temperature"), ({}, "prompt"),
                        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias.abc")):
        r = post("/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = post("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role", r.text
    r = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs", r.text
    r = post("/detokenize", {"tokens": [1, 10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens[1]", r.text


OPERATIONS = [("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
              ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize"),
              ("POST", "/detokenize"), ("GET", "/metrics"), ("GET", "/admin/memory")]


def _no_own_deadline(case: Any) -> Any:
    """A request's own ``timeout`` of a few microseconds passes before its first step: the documented 504
    (tested in test_server.py). Here every request runs under the server's 20 s instead, so a 504 means
    something hung."""
    if isinstance(case.body, dict) and "timeout" in case.body:
        case.body = {**case.body, "timeout": None}
    return case


# broken inputs, for the operations that take any (a body, a path parameter)
TAKES_INPUT = [(m, p) for m, p in OPERATIONS if m == "POST" or "{" in p]
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + \
    [(m, p, GenerationMode.NEGATIVE) for m, p in TAKES_INPUT]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m}-{p}-{g.value}" for m, p, g in CASES])
def test_no_operation_answers_a_server_error(api_schema: Any, live: Live, method: str, path: str,
                                             mode: GenerationMode) -> None:
    assert {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()} == set(OPERATIONS)
    op = api_schema[path][method]
    statuses: list[int] = []

    @given(case=op.as_strategy(generation_mode=mode).map(_no_own_deadline))
    @settings(max_examples=EXAMPLES * (4 if "completions" in path else 1), deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    def run(case: Any) -> None:
        r = case.call_and_validate(base_url=live.url, headers=AUTH, checks=[not_a_server_error], timeout=60)
        statuses.append(r.status_code)


    run()
    assert statuses  # examples ran
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= s < 500 for s in statuses), statuses  # broken bodies were refused
