"""The generation loop and the OpenAI-shaped API on a small random model with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forward_probe import BatchSizes
from pool_helpers import assert_pool_free

from nlm_native import LLM, SamplingParams
from nlm_native.sampling import log_softmax

from stop_helpers import split_stop

PROMPT = "the rain in spain stays on the plain"


@pytest.fixture(scope="module")
def llm(tiny_chat_path: Path) -> LLM:
    return LLM(tiny_chat_path, n_ctx=512, n_threads=2, kv_type="f32")


def stream_texts(llm: LLM, prompt: str, params: SamplingParams) -> tuple[list[str], list[list[str]], list[str]]:
    texts = [""] * params.n
    chunks: list[list[str]] = [[] for _ in range(params.n)]
    reasons = [""] * params.n
    for c in llm.stream(prompt, params):
        texts[c.index] += c.text
        chunks[c.index].append(c.text)
        if c.finish_reason:
            reasons[c.index] = c.finish_reason
    return texts, chunks, reasons


def test_samples_share_the_prompt_and_decode_in_one_batch(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = llm.tokenize(PROMPT)
    counter = BatchSizes(llm, monkeypatch)
    outs = llm.generate(PROMPT, SamplingParams(max_tokens=6, n=4, seed=1, ignore_eos=True))
    assert len(outs) == 4 and all(len(o.token_ids) == 6 for o in outs)
    # the prompt is computed once (forked, not recomputed); then one batch of 4 per step
    assert counter.sizes == [len(ids)] + [4] * 5
    assert len({tuple(o.token_ids) for o in outs}) > 1, "independent samples should differ"
    assert_pool_free(llm)


def test_seed_reproduces_and_greedy_is_deterministic(llm: LLM) -> None:
    p = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=42, n=2, ignore_eos=True)
    a = [o.token_ids for o in llm.generate(PROMPT, p)]
    assert a == [o.token_ids for o in llm.generate(PROMPT, p)]
    assert a != [o.token_ids for o in llm.generate(PROMPT, p.with_(seed=43))]
    g = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0, n=3))
    assert g[0].token_ids == g[1].token_ids == g[2].token_ids
    logits = llm.model.eval(llm.tokenize(PROMPT))[-1]
    assert g[0].token_ids[0] == int(np.argmax(logits))


def test_streaming_equals_generate(llm: LLM) -> None:
    p = SamplingParams(max_tokens=30, temperature=1.0, seed=7, n=3)
    outs = llm.generate(PROMPT, p)
    texts, chunks, reasons = stream_texts(llm, PROMPT, p)
    assert texts == [o.text for o in outs]
    assert reasons == [o.finish_reason for o in outs]
    for o in outs:
        assert o.text == llm.detokenize(o.token_ids) or o.finish_reason == "stop"


def test_stop_string_across_tokens_is_honoured_and_not_leaked(llm: LLM) -> None:
    base = llm.generate(PROMPT, SamplingParams(max_tokens=40, temperature=0, logprobs=True))[0]
    stop, cut = split_stop(llm, base.token_ids, base.text, 1)
    p = SamplingParams(max_tokens=40, temperature=0, stop=[stop], logprobs=True)
    out = llm.generate(PROMPT, p)[0]
    assert out.text == base.text[:cut] and out.finish_reason == "stop" and out.stop_reason == stop
    # streamed: no chunk carries any part of the stop string or what follows it
    texts, chunks, reasons = stream_texts(llm, PROMPT, p)
    assert texts[0] == base.text[:cut] and reasons[0] == "stop"
    seen = ""
    for c in chunks[0]:
        seen += c
        assert len(seen) <= cut
    # log-probabilities cover exactly the tokens whose text starts before the cut
    assert out.logprobs is not None
    assert all(e.text_offset < cut for e in out.logprobs)
    assert len(out.logprobs) == sum(1 for e in base.logprobs or [] if e.text_offset < cut)


def test_stop_token_ids_eos_and_ignore_eos(llm: LLM) -> None:
    base = llm.generate(PROMPT, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    tid = base.token_ids[4]
    k = base.token_ids.index(tid)
    out = llm.generate(PROMPT, SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[tid]))[0]
    assert out.token_ids == base.token_ids[:k] and out.finish_reason == "stop" and out.stop_reason == tid
    eos = llm.tokenizer.eos_id
    assert eos is not None
    forced = SamplingParams(max_tokens=5, temperature=0, logit_bias={eos: 100})
    out = llm.generate(PROMPT, forced)[0]
    assert (out.text, out.finish_reason, out.stop_reason) == ("", "stop", eos)
    out = llm.generate(PROMPT, forced.with_(ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5 and eos not in out.token_ids


def test_length_limits_and_context(llm: LLM) -> None:
    out = llm.generate(PROMPT, SamplingParams(max_tokens=0))[0]
    assert (out.text, out.finish_reason) == ("", "length")
    small = LLM(llm.model.path, n_ctx=40, n_threads=1)
    ids = small.tokenize(PROMPT)
    out = small.generate(PROMPT, SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(ids) + len(out.token_ids) == 40
    with pytest.raises(ValueError, match="n_ctx"):
        small.generate(list(range(40)), SamplingParams())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        small.generate([1, 2, 100000], SamplingParams())
    assert_pool_free(small)


def test_closing_a_stream_early_frees_the_kv_cache(llm: LLM) -> None:
    it = llm.stream(PROMPT, SamplingParams(max_tokens=50, n=2, seed=3, ignore_eos=True))
    next(it)
    next(it)
    assert llm.model.kv_free_blocks < llm.model.kv_blocks
    it.close()
    assert_pool_free(llm)


def test_logprobs_are_the_models_distribution_before_temperature(llm: LLM) -> None:
    p = SamplingParams(max_tokens=8, temperature=1.7, top_k=3, seed=5, logprobs=True, top_logprobs=4,
                       ignore_eos=True)
    out = llm.generate(PROMPT, p)[0]
    ids = llm.tokenize(PROMPT)
    ref = log_softmax_rows(llm.model.eval(ids + out.token_ids)[len(ids) - 1:-1])
    assert out.logprobs is not None and len(out.logprobs) == 8
    for row, e, t in zip(ref, out.logprobs, out.token_ids, strict=True):
        assert e.token_id == t
        assert abs(e.logprob - row[t]) < 2e-3
        assert [i for i, _ in e.top] == list(np.argsort(-row, kind="stable")[:4])
    assert out.cumulative_logprob == pytest.approx(sum(e.logprob for e in out.logprobs))


def log_softmax_rows(x: np.ndarray) -> np.ndarray:
    return np.stack([log_softmax(r) for r in x])


def test_best_of_returns_the_highest_mean_logprob_samples(llm: LLM) -> None:
    all4 = llm.generate(PROMPT, SamplingParams(max_tokens=10, n=4, seed=11, logprobs=True))
    best = llm.generate(PROMPT, SamplingParams(max_tokens=10, n=2, best_of=4, seed=11))
    ranked = sorted(all4, key=lambda o: -(o.mean_logprob or -1e9))[:2]
    assert [o.token_ids for o in best] == [o.token_ids for o in ranked]
    assert [o.index for o in best] == [0, 1] and best[0].mean_logprob >= best[1].mean_logprob
    with pytest.raises(ValueError, match="best_of"):
        next(llm.stream(PROMPT, SamplingParams(n=1, best_of=2)))


# --- OpenAI shapes ------------------------------------------------------------------------------


def test_completion_shape_usage_and_logprobs(llm: LLM) -> None:
    r = llm.create_completion(PROMPT, max_tokens=5, temperature=0, logprobs=2, echo=False, n=2, seed=1)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and len(r["choices"]) == 2
    c = r["choices"][0]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"}
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert chosen == pytest.approx(max(top.values()))  # greedy: the chosen token is the most likely
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    n_prompt = len(llm.tokenize(PROMPT))
    assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 10, "total_tokens": n_prompt + 10,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    echo = llm.create_completion(PROMPT, max_tokens=3, temperature=0, echo=True)
    assert echo["choices"][0]["text"].startswith(PROMPT)
    batch = llm.create_completion([PROMPT, "on the"], max_tokens=2, temperature=0)
    assert [ch["index"] for ch in batch["choices"]] == [0, 1]


def test_completion_stream_chunks_and_usage(llm: LLM) -> None:
    full = llm.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=9)
    chunks = list(llm.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=9, stream=True,
                                        stream_options={"include_usage": True}))
    assert all(ch["object"] == "text_completion" and ch["id"] == chunks[0]["id"] for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == full["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


@pytest.mark.parametrize("fields", [
    {"foo": 1}, {"response_format": {"type": "json_object"}}, {"logprobs": 9}, {"logprobs": True},
    {"echo": True, "logprobs": 1}, {"stream_options": {"include_usage": True}}, {"temperature": 2.5},
    {"stop": 5}, {"logit_bias": {"x": 1}}, {"best_of": 1, "n": 2},
])
def test_completion_rejects_unsupported_or_bad_fields(llm: LLM, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        llm.create_completion(PROMPT, **fields)


def test_chat_completion_shape_and_stream(llm: LLM) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    prompt = llm.apply_chat_template(msgs)
    assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    r = llm.create_chat_completion(msgs, max_tokens=10, temperature=0.7, seed=2, logprobs=True, top_logprobs=2)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    ch = r["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert r["usage"]["prompt_tokens"] == len(llm.tokenize(prompt, special=True))
    content = ch["logprobs"]["content"]
    assert bytes(b for e in content for b in e["bytes"]).decode("utf-8", "replace") == ch["message"]["content"]
    assert all(len(e["top_logprobs"]) == 2 for e in content)
    chunks = list(llm.create_chat_completion(msgs, max_tokens=10, temperature=0.7, seed=2, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == ch["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == ch["finish_reason"]
    assert chunks[-1]["choices"][0]["delta"] == {}


@pytest.mark.parametrize("fields", [
    {"audio": {}}, {"response_format": {"type": "json_schema", "json_schema": {}}}, {"top_logprobs": 2},
    {"tool_choice": "auto"}, {"max_tokens": 3, "max_completion_tokens": 3}, {"best_of": 2},
    {"response_format": {"type": "xml"}}, {"logprobs": 1},
])
def test_chat_rejects_unsupported_or_bad_fields(llm: LLM, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        llm.create_chat_completion([{"role": "user", "content": "hi"}], **fields)


def test_chat_json_mode_only_produces_json(llm: LLM) -> None:
    """A random model constrained by response_format writes JSON objects and stops when they close."""
    done = 0
    for seed in range(4):
        r = llm.create_chat_completion([{"role": "user", "content": "json please"}], max_tokens=60, seed=seed,
                                       temperature=1.0, response_format={"type": "json_object"},
                                       logit_bias={ord("}"): 4.0, ord('"'): 2.0})
        ch = r["choices"][0]
        text = ch["message"]["content"]
        assert text.startswith("{"), text
        if ch["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
            done += 1
    assert done >= 1


def test_a_model_without_a_chat_template_needs_one_passed(tiny_chat_path: Path) -> None:
    from nlm_native import ChatTemplateError

    bare = LLM(tiny_chat_path, n_ctx=128, chat_template="")
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="no tokenizer.chat_template"):
        bare.create_chat_completion(msgs, max_tokens=2)
    tpl = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    assert bare.apply_chat_template(msgs, chat_template=tpl) == "[user] hi\n[assistant] "
    r = bare.create_chat_completion(msgs, max_tokens=2, temperature=0, chat_template=tpl)
    assert r["usage"]["prompt_tokens"] == len(bare.tokenize("[user] hi\n[assistant] "))
    with pytest.raises(ChatTemplateError):
        bare.chat(msgs, SamplingParams(max_tokens=2))
    with pytest.raises(ChatTemplateError, match="compile"):
        LLM(tiny_chat_path, n_ctx=128, chat_template="{% for %}")


def test_llm_chat_is_generate_on_the_rendered_prompt(llm: LLM) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    p = SamplingParams(max_tokens=6, seed=4)
    assert [o.token_ids for o in llm.chat(msgs, p)] == [o.token_ids for o in llm.generate(
        llm.apply_chat_template(msgs), p)]


# --- regressions from review ------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object", "properties": {}}}}]
HI = [{"role": "user", "content": "hi"}]


def test_streamed_bad_requests_raise_before_any_chunk(llm: LLM) -> None:
    cases: list[tuple[Any, dict[str, Any]]] = [
        (llm.create_chat_completion, {"messages": HI, "logit_bias": {"100000": 1}}),
        (llm.create_chat_completion, {"messages": [{"role": "user", "content": "a " * 300}]}),
        (llm.create_completion, {"prompt": ["hi", "a " * 300], "max_tokens": 3}),
        (llm.create_completion, {"prompt": "hi", "best_of": 2}),
    ]
    for fn, kw in cases:
        with pytest.raises(ValueError):
            fn(**kw, stream=True)  # raised by the call itself, not by iterating
    assert_pool_free(llm)


@pytest.mark.parametrize("fields", [
    {"temperature": "1"}, {"stop_token_ids": 5}, {"ignore_eos": "yes"},
    {"stream": True, "stream_options": {"include_usage": "yes"}},
])
def test_wrongly_typed_fields_are_value_errors(llm: LLM, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        llm.create_completion("hello", **fields)


@pytest.mark.parametrize("fields", [
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": "get"}},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ["get"]}}},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "other"}}},
    {"functions": [{"name": "get"}], "function_call": {"name": ["get"]}},
    {"chat_template": 5},
])
def test_malformed_tool_choice_is_a_value_error(llm: LLM, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        llm.create_chat_completion(HI, **fields)


@pytest.mark.parametrize("extra", [
    {"tool_calls": [{"id": "a", "type": "function", "function": [1, 2]}]},
    {"tool_calls": [{"id": "a", "type": "function", "function": "get"}]},
    {"tool_calls": {"id": "a"}},
    {"function_call": "get"},
])
def test_malformed_tool_calls_in_messages_name_the_message(llm: LLM, extra: dict[str, Any]) -> None:
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, **extra}]
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        llm.create_chat_completion(msgs)


def test_negative_seeds_are_seeds(llm: LLM) -> None:
    a = llm.create_completion("hello", seed=-1, max_tokens=6)["choices"][0]["text"]
    assert a == llm.create_completion("hello", seed=-1, max_tokens=6)["choices"][0]["text"]


def test_streamed_tool_calls_keep_the_text_around_them(llm: LLM) -> None:
    from nlm_native.api.chat import _ChatRequest, _chunks
    from nlm_native.engine import StreamChunk

    req = _ChatRequest(llm, HI, TOOLS, {})
    pieces = ["Let me check.", "\n<tool_", 'call>\n{"name": "get", "arguments": {}}\n</tool_call>',
              "\nAnd some more text"]
    stream = [StreamChunk(0, p, [1], None) for p in pieces[:-1]] + [StreamChunk(0, pieces[-1], [1], None, "stop")]
    chunks = list(_chunks(req, {"id": "x", "created": 0, "model": "m"}, iter(stream), with_usage=False))
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    msg, _ = req.message("".join(pieces))
    assert content.split() == (msg["content"] or "").split() == "Let me check. And some more text".split()
    assert [tc["function"]["name"] for tc in calls] == ["get"] and "<tool" not in content
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("text", "held"), [
    ("```python\nprint(1)\n```", False), ("<div>hi</div>", False), ("Sure, here it is", False),
    ('```json\n{"name": "get", "arguments": {}}\n```', True), (' {"name": "get"}', True), ("<tool_call>", True),
])
def test_tool_gate_holds_only_what_may_be_a_call(text: str, held: bool) -> None:
    from nlm_native.api.chat import _ToolGate

    gate = _ToolGate("")
    out = "".join(gate.feed(ch) for ch in text)
    assert (out == "") == held and (held or out + gate.rest() == text)


def test_a_full_kv_pool_ends_the_longest_sample_and_the_others_go_on(tiny_chat_path: Path) -> None:
    small = LLM(tiny_chat_path, n_ctx=256, kv_blocks=12, block_tokens=8, n_threads=1)
    ids = small.tokenize(PROMPT)[:12]  # 2 blocks; 10 are left for 3 samples
    outs = small.generate(ids, SamplingParams(max_tokens=200, n=3, seed=2, ignore_eos=True))
    assert all(o.finish_reason == "length" for o in outs)
    lengths = sorted(len(o.token_ids) for o in outs)
    # the longest ends first, freeing its blocks: the last one left fills the whole pool
    # (its final token is sampled, not stored)
    assert lengths[0] < lengths[1] < lengths[2] and len(ids) + lengths[2] - 1 == 12 * 8
    assert_pool_free(small)


def test_closing_openai_streams_early_frees_the_kv_cache(llm: LLM) -> None:
    # each starts generating when it is created (the engine runs it): made one after the other
    for make in (lambda: llm.create_chat_completion(HI, stream=True, max_tokens=50, ignore_eos=True),
                 lambda: llm.create_completion(PROMPT, stream=True, max_tokens=50, ignore_eos=True, n=2)):
        it = make()
        kept = [next(it), next(it), next(it)]  # noqa: F841 - chunks stay referenced
        assert llm.model.kv_free_blocks < llm.model.kv_blocks
        it.close()
        assert_pool_free(llm)
