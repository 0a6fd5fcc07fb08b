"""Text in, text out with the real model: llama.cpp's greedy text, JSON, tool calls, streaming, stops."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pool_helpers import assert_pool_free

from nlm_native import LLM, SamplingParams

from real_model import oracle, real_model_path
from stop_helpers import split_stop

pytestmark = pytest.mark.real_model

MAX_DIVERGING = 2  # of the 10 prompts, allowed to differ from llama.cpp after the 16th token
# A near tie: llama.cpp's own recorded gap between its top two tokens, in nats, below which float
# rounding decides (our log-probabilities of llama.cpp's recorded top 5 differ from its by up to
# about 0.13 at the 90th percentile: Q8 activation codes flip on ulp-sized differences).
NEAR_TIE = 0.15
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(real_model_path(), n_threads=2, n_ctx=2048)


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    return oracle()


def test_greedy_completions_reproduce_llamacpp(llm: LLM, fixture: dict[str, Any]) -> None:
    """create_completion(temperature=0) on each oracle prompt (text, special tokens parsed) vs llama.cpp.

    At most MAX_DIVERGING prompts may diverge after the 16th token. Before it, a divergence is
    accepted only at a near tie: where llama.cpp's own recorded distribution at that position
    ranks our token first (its greedy run contradicts its own teacher-forced logits: its
    single-token and batched paths break the tie differently), or, for at most one prompt, where
    its recorded top-2 gap is below NEAR_TIE and our token is its second.
    """
    diverging = []
    for case in fixture["cases"]:
        want_ids = case["greedy_ids"]
        stopped_early = want_ids[-1] in llm.eog_ids
        r = llm.create_completion(case["text"], max_tokens=len(want_ids), temperature=0, logprobs=1)
        ch = r["choices"][0]
        assert r["usage"]["prompt_tokens"] == len(case["prompt_ids"]), case["name"]
        if ch["text"] == case["greedy_text"]:
            assert ch["finish_reason"] == ("stop" if stopped_early else "length"), case["name"]
            continue
        ours = llm.generate(case["text"], SamplingParams(temperature=0, max_tokens=len(want_ids)))[0].token_ids
        at = next(i for i, (a, b) in enumerate(zip(ours + [-1], want_ids, strict=False)) if a != b)
        rec = case["positions"][at] if at < len(case["positions"]) else None
        own_top = rec["ids"][0] if rec else None
        gap = rec["logprobs"][0] - rec["logprobs"][1] if rec else None
        diverging.append((case["name"], at, ours[at] if at < len(ours) else None, want_ids[at], own_top, gap))
        print(f"{case['name']}: diverges at token {at}: ours {ours[at] if at < len(ours) else None}, "
              f"llama.cpp greedy {want_ids[at]}, llama.cpp's own top-1 there {own_top} (top-2 gap {gap})\n"
              f"  ours:   {ch['text'][:100]!r}\n  theirs: {case['greedy_text'][:100]!r}")
    early = [d for d in diverging if d[1] < 16]
    near_ties = []
    for name, at, ours_t, _, own_top, gap in early:
        if ours_t == own_top:
            continue  # llama.cpp's greedy run contradicts its own recorded logits; ours agree with them
        rec = next(c for c in fixture["cases"] if c["name"] == name)["positions"][at]
        assert gap is not None and gap < NEAR_TIE and ours_t == rec["ids"][1], (
            f"{name} diverges at token {at}, not at a near tie of llama.cpp's own record (gap {gap})")
        near_ties.append(name)
    assert len(near_ties) <= 1, near_ties
    assert len(diverging) - len(early) <= MAX_DIVERGING, diverging


def test_json_chat_returns_parseable_json(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "Return a JSON object with keys name and age for a person called Ada "
                                        "who is 36. Reply with JSON only."}]
    r = llm.create_chat_completion(msgs, temperature=0, response_format={"type": "json_object"}, max_tokens=64)
    ch = r["choices"][0]
    assert ch["finish_reason"] == "stop"
    assert json.loads(ch["message"]["content"]) == {"name": "Ada", "age": 36}
    # with sampling too, the output is always a JSON object
    for seed in (1, 2):
        r = llm.create_chat_completion(msgs, temperature=1.0, seed=seed, response_format={"type": "json_object"},
                                       max_tokens=64)
        assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)


def test_tool_call_for_the_weather_in_paris(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = llm.create_chat_completion(msgs, tools=[WEATHER_TOOL], temperature=0)
    ch = r["choices"][0]
    assert ch["finish_reason"] == "tool_calls", ch
    (call,) = ch["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # streamed: the same call in one delta, no raw <tool_call> text in the content
    chunks = list(llm.create_chat_completion(msgs, tools=[WEATHER_TOOL], temperature=0, stream=True))
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert "<tool_call>" not in content and len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["index"] == 0
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the call and a tool result go back into the template for the next turn
    follow = msgs + [ch["message"], {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 18}'}]
    r2 = llm.create_chat_completion(follow, tools=[WEATHER_TOOL], temperature=0, max_tokens=40)
    assert r2["choices"][0]["finish_reason"] in ("stop", "length")
    assert "18" in (r2["choices"][0]["message"]["content"] or "")


def test_forced_tool_choice(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "Tell me about Lyon."}]
    r = llm.create_chat_completion(msgs, tools=[WEATHER_TOOL], temperature=0,
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    ch = r["choices"][0]
    assert ch["finish_reason"] == "tool_calls"
    assert ch["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "city" in json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"])


def test_streaming_concatenates_to_the_non_streaming_text(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "Write a haiku about the sea."}]
    kw: dict[str, Any] = dict(temperature=0.8, top_p=0.95, seed=1234, max_tokens=40)
    full = llm.create_chat_completion(msgs, **kw)["choices"][0]
    chunks = list(llm.create_chat_completion(msgs, stream=True, **kw))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == full["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["finish_reason"]
    prompt = "# Emoji table 🦙🚀✨\nemoji = {\n"
    p = SamplingParams(temperature=0.7, seed=5, max_tokens=40)
    whole = llm.generate(prompt, p)[0].text
    pieces = [c.text for c in llm.stream(prompt, p)]
    # only the last piece may end in U+FFFD: a character cut by max_tokens, flushed as decode() has it
    assert "".join(pieces) == whole and all("\ufffd" not in t for t in pieces[:-1])
    assert "\ufffd" not in pieces[-1][:-1]


def test_stop_sequence_split_across_tokens(llm: LLM, fixture: dict[str, Any]) -> None:
    case = fixture["cases"][0]  # quicksort: its greedy text is known
    base = llm.generate(case["text"], SamplingParams(temperature=0, max_tokens=48))[0]
    stop, cut = split_stop(llm, base.token_ids, base.text, 2)
    print(f"stop {stop!r} at {cut} of {base.text!r}")
    r = llm.create_completion(case["text"], temperature=0, max_tokens=48, stop=[stop])
    assert r["choices"][0]["text"] == base.text[:cut] and r["choices"][0]["finish_reason"] == "stop"
    streamed = ""
    for c in llm.create_completion(case["text"], temperature=0, max_tokens=48, stop=[stop], stream=True):
        streamed += c["choices"][0]["text"]
        assert len(streamed) <= cut and stop not in streamed
    assert streamed == base.text[:cut]


def test_n_samples_and_best_of_on_the_real_model(llm: LLM) -> None:
    outs = llm.generate("def add(a, b):", SamplingParams(temperature=0.9, seed=3, max_tokens=16, n=3, best_of=5))
    assert len(outs) == 3 and len({o.text for o in outs}) >= 2
    assert outs[0].mean_logprob >= outs[1].mean_logprob >= outs[2].mean_logprob
    assert_pool_free(llm)  # all five samples' blocks came back (or are the prefix cache's)


def test_legacy_functions_and_fill_in_the_middle(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = llm.create_chat_completion(msgs, functions=[WEATHER_TOOL["function"]], function_call={"name": "get_weather"},
                                   temperature=0)
    ch = r["choices"][0]
    assert ch["finish_reason"] == "function_call" and "tool_calls" not in ch["message"]
    assert ch["message"]["function_call"]["name"] == "get_weather"
    assert json.loads(ch["message"]["function_call"]["arguments"]) == {"city": "Paris"}
    fim = llm.create_completion("def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n", max_tokens=12,
                                temperature=0)
    assert "return a + b" in fim["choices"][0]["text"]
    echoed = llm.create_completion("def add(a, b):\n    ", suffix="\n", echo=True, max_tokens=4, temperature=0)
    assert echoed["choices"][0]["text"].startswith("def add(a, b):\n    return")
