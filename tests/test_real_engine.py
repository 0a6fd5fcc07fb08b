"""The engine and structured output on the real model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pool_helpers import assert_pool_free

from nlm_native import LLM, SamplingParams

from real_model import real_model_path


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    with LLM(real_model_path(), n_threads=2, n_ctx=2048) as m:
        yield m


@pytest.fixture(autouse=True)
def drained(llm: LLM) -> Iterator[None]:
    yield
    assert_pool_free(llm)


PROMPTS = ["def fibonacci(n):", "import numpy as np\n\n# a 3x3 identity matrix\n", "The capital of France is",
           "SELECT name FROM users WHERE", "// quicksort in C\nvoid quicksort(int *a, int n) {",
           "<|im_start|>user\nWrite a haiku about rust.<|im_end|>\n<|im_start|>assistant\n", "class Stack:\n",
           "Q: What is 12 * 12?\nA:"]


def test_eight_concurrent_greedy_requests_give_exactly_their_tokens_alone(llm: LLM) -> None:
    params = [SamplingParams(max_tokens=6 + 4 * i, temperature=0) for i in range(len(PROMPTS))]
    want = [llm.generate(p, sp)[0].token_ids for p, sp in zip(PROMPTS, params, strict=True)]  # type: ignore[union-attr]
    got: list[Any] = [None] * len(PROMPTS)

    def one(i: int) -> None:
        got[i] = llm.generate(PROMPTS[i], params[i])[0].token_ids  # type: ignore[union-attr]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        assert a == b, f"prompt {i}: alone {llm.detokenize(a)!r}, batched {llm.detokenize(b)!r}"


def test_seeded_sampled_requests_alone_and_batched(llm: LLM) -> None:
    params = [SamplingParams(max_tokens=16, temperature=0.8, top_p=0.95, seed=s, n=1 + s % 2) for s in range(4)]
    want = [[o.token_ids for o in llm.generate(PROMPTS[i], sp)] for i, sp in enumerate(params)]  # type: ignore[union-attr]
    got = llm.generate(PROMPTS[:4], params[0])  # the same prompts together (one params for all)
    assert [o.token_ids for o in got[0]] == want[0]  # type: ignore[union-attr,index]
    streams = [llm.submit(PROMPTS[i], sp) for i, sp in enumerate(params)]
    from nlm_native.engine import fold

    together = [[o.token_ids for o in fold(s, samples=sp.samples, n=sp.n, logprobs=False)]
                for s, sp in zip(streams, params, strict=True)]
    assert together == want


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                               "maxItems": 3}},
     "required": ["color", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer"}, "admin": {"type": "boolean"}}, "required": ["id", "admin"],
        "additionalProperties": False}, "score": {"type": "number"}},
     "required": ["user"], "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}},
     "required": ["items"], "additionalProperties": False},
]


def test_json_schema_outputs_validate_over_seeds_and_schemas(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "Invent an example record."}]
    results = []

    def one(si: int, seed: int) -> None:
        r = llm.create_chat_completion(msgs, seed=seed, temperature=1.0, max_tokens=120, response_format={
            "type": "json_schema", "json_schema": {"name": f"s{si}", "schema": SCHEMAS[si], "strict": True}})
        results.append((si, seed, r["choices"][0]))

    threads = [threading.Thread(target=one, args=(si, seed)) for si in range(len(SCHEMAS)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16
    for si, seed, ch in results:
        assert ch["finish_reason"] == "stop", (si, seed, ch)
        jsonschema.validate(json.loads(ch["message"]["content"]), SCHEMAS[si])


def test_json_object_mode(llm: LLM) -> None:
    r = llm.create_chat_completion([{"role": "user", "content": "Describe a cat as JSON."}], seed=1,
                                   max_tokens=100, response_format={"type": "json_object"})
    ch = r["choices"][0]
    assert ch["finish_reason"] == "stop" and isinstance(json.loads(ch["message"]["content"]), dict)


def test_grammar_option_holds(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "Is water wet? Answer and explain."}]
    gbnf = 'root ::= ("yes" | "no") ", because " [a-z ]{1,40} "."'
    lark = 'start: ANSWER ", because " /[a-z ]{1,40}/ "."\nANSWER: "yes" | "no"'
    for g in (gbnf, lark):
        for seed in range(3):
            text = llm.create_chat_completion(msgs, grammar=g, seed=seed, max_tokens=40)["choices"][0]["message"][
                "content"]
            assert re.fullmatch(r"(yes|no), because [a-z ]{1,40}\.", text), text
    r = llm.create_chat_completion(msgs, grammar={"type": "regex", "value": r"(Yes|No)!"}, max_tokens=5)
    assert r["choices"][0]["message"]["content"] in ("Yes!", "No!")
    with pytest.raises(ValueError, match="grammar"):
        llm.create_chat_completion(msgs, grammar="start: undefined_rule")


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time in a timezone",
                                         "parameters": {"type": "object", "properties": {
                                             "tz": {"type": "string"}}, "required": ["tz"],
                                             "additionalProperties": False}}}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_follow_the_parameter_schema(llm: LLM, choice: Any) -> None:
    msgs = [{"role": "user", "content": "I am flying to Oslo tomorrow, anything I should know?"}]
    for seed in range(3):
        r = llm.create_chat_completion(msgs, tools=[WEATHER, TIME], tool_choice=choice, seed=seed, temperature=1.0,
                                       max_tokens=80)
        ch = r["choices"][0]
        assert ch["finish_reason"] == "tool_calls", ch
        (call,) = ch["message"]["tool_calls"]
        fn = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
        if isinstance(choice, dict):
            assert call["function"]["name"] == "get_time"
        jsonschema.validate(json.loads(call["function"]["arguments"]), fn["function"]["parameters"])


def test_json_mode_together_with_tools(llm: LLM) -> None:
    """OpenAI allows both: the reply is a JSON object or a tool call, nothing else."""
    cases = [("What is the weather in Paris, in celsius?", None), ("Give me a JSON object with a greeting.", None)]
    kinds = set()
    for text, _ in cases:
        for seed in range(2):
            r = llm.create_chat_completion([{"role": "user", "content": text}], tools=[WEATHER], seed=seed,
                                           max_tokens=80, response_format={"type": "json_object"})
            ch = r["choices"][0]
            if ch["finish_reason"] == "tool_calls":
                (call,) = ch["message"]["tool_calls"]
                jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
                kinds.add("call")
            else:
                assert ch["finish_reason"] == "stop" and isinstance(json.loads(ch["message"]["content"]), dict), ch
                kinds.add("json")
    assert kinds, "neither a call nor JSON"


def test_prefix_reuse_gives_the_tokens_of_a_full_prefill(llm: LLM) -> None:
    """A 300-token conversation prefix cached by one request serves the next: same greedy tokens."""
    system = "You are a careful senior Python reviewer. " * 30
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Review: def f(x): return x*2"}]
    follow = msgs + [{"role": "assistant", "content": "Looks fine."},
                     {"role": "user", "content": "And def g(x): return x/0 ?"}]
    want = llm.create_chat_completion(follow, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
    with LLM(real_model_path(), n_threads=2, n_ctx=2048, prefix_cache=True) as cached:
        cached.create_chat_completion(msgs, max_tokens=4, temperature=0)
        r = cached.create_chat_completion(follow, max_tokens=12, temperature=0)
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 256
        assert r["choices"][0]["message"]["content"] == want


@pytest.mark.parametrize("codec", ["f16", "int8"])
def test_a_restarted_process_restores_a_long_prompt(tmp_path: Path, codec: str) -> None:
    """Process A computes a 1,000+ token prompt and persists it; process B, a fresh interpreter on the same
    stores, reports the cached tokens and gives the same next-token log-probabilities (in the f16 pool
    and in the int8 codec, whose stored blocks are what A attended over)."""
    script = f"""
import json
from nlm_native import LLM, SamplingParams
from nlm_native.core.fetch import fetch
llm = LLM(fetch(), n_threads=2, n_ctx=2048, kv_codec={codec!r}, kv_store="sqlite:///{tmp_path / 'kv.db'}",
          blob_store="file://{tmp_path / 'blobs'}")
text = open({str(Path(__file__).resolve())!r}).read()[:4000]
ids = llm.tokenize(text)
s = llm.submit(ids, SamplingParams(max_tokens=4, temperature=0, logprobs=True, top_logprobs=5))
chunks = list(s)
llm.close()
lp = [e for c in chunks for e in (c.logprobs or [])]
print(json.dumps({{"n": len(ids), "cached": s.metrics.cached_tokens, "tokens": [e.token_id for e in lp],
                  "top": [[t, l] for t, l in lp[0].top]}}))
"""
    import json
    import subprocess
    import sys

    a, b = (json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(2))
    assert a["n"] >= 1000 and a["cached"] == 0
    assert b["cached"] >= a["n"] - 32, b
    assert b["tokens"] == a["tokens"]
    assert [t for t, _ in b["top"]] == [t for t, _ in a["top"]]
    for (_, la), (_, lb) in zip(a["top"], b["top"], strict=True):
        assert abs(la - lb) < 1e-4
