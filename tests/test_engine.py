"""The engine: many requests batched step by step give what each gives alone.

On a small random qwen2 model (fast); tests/test_real_engine.py repeats the key ones on the real
model and checks structured output. Every test ends with the KV pool empty.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forward_probe import BatchSizes
from pool_helpers import assert_pool_free

from nlm_native import (
    LLM,
    Engine,
    Grammar,
    QueueFull,
    RequestTimeout,
    SamplingParams,
    SchedulerConfig,
    StreamChunk,
)
from nlm_native.engine import AsyncEngine, fold

WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()


def prompt(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def make_llm(path: Path, **kw: Any) -> LLM:
    kw.setdefault("n_ctx", 1024)
    kw.setdefault("n_threads", 2)
    return LLM(path, **kw)


@pytest.fixture(scope="module")
def llm(tiny_chat_path: Path) -> Iterator[LLM]:
    with make_llm(tiny_chat_path, kv_type="f32") as m:
        yield m


@pytest.fixture(autouse=True)
def drained(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fill and drain: whatever a test did, the pool it used is empty at its end."""
    yield
    for name in ("llm", "engine_llm"):
        if name in request.fixturenames:
            m: LLM = request.getfixturevalue(name)
            assert_pool_free(m)


def alone(llm: LLM, p: Any, params: SamplingParams) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(p, params)]  # type: ignore[union-attr]


def run_threads(fns: list[Any]) -> list[Any]:
    out: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return out


def test_concurrent_greedy_requests_give_what_they_give_alone(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [(prompt(i, 3 + 5 * i), SamplingParams(max_tokens=4 + 7 * i, temperature=0, ignore_eos=True))
             for i in range(8)]
    want = [alone(llm, p, sp) for p, sp in cases]
    steps = BatchSizes(llm, monkeypatch)
    got = run_threads([lambda p=p, sp=sp: alone(llm, p, sp) for p, sp in cases])
    assert got == want
    assert max(steps.sizes) > 8, "the threads' requests should have shared steps"


def test_seeded_samples_are_the_same_alone_and_in_a_busy_batch(llm: LLM) -> None:
    sampled = [SamplingParams(max_tokens=20, temperature=t, top_p=tp, top_k=k, seed=s, ignore_eos=True,
                              repeat_penalty=rp, logprobs=True, top_logprobs=2)
               for t, tp, k, s, rp in ((0.8, 1.0, 0, 1, 1.0), (1.2, 0.9, 0, 2, 1.1), (1.0, 1.0, 20, 3, 1.0))]
    want = [llm.generate(prompt(i, 6), sp) for i, sp in enumerate(sampled)]
    noise = [llm.submit(prompt(9 + i, 4 + i), SamplingParams(max_tokens=30, seed=i, ignore_eos=True))
             for i in range(5)]
    got = [llm.generate(prompt(i, 6), sp) for i, sp in enumerate(sampled)]
    for s in noise:
        list(s)
    for a, b in zip(want, got, strict=True):
        assert [o.token_ids for o in a] == [o.token_ids for o in b]  # type: ignore[union-attr]
        la = [e.logprob for e in a[0].logprobs]  # type: ignore[union-attr,index]
        lb = [e.logprob for e in b[0].logprobs]  # type: ignore[union-attr,index]
        np.testing.assert_allclose(la, lb, atol=1e-6)


def test_n_and_best_of_inside_a_busy_batch_behave_as_alone(llm: LLM) -> None:
    p2 = SamplingParams(max_tokens=15, temperature=1.0, seed=11, n=2, ignore_eos=True)
    pb = SamplingParams(max_tokens=15, temperature=1.0, seed=12, n=2, best_of=4)
    want = (alone(llm, prompt(1, 5), p2), alone(llm, prompt(2, 5), pb))
    busy = [llm.submit(prompt(i, 3 + i), SamplingParams(max_tokens=25, temperature=0, ignore_eos=True))
            for i in range(6)]
    got = tuple(run_threads([lambda: alone(llm, prompt(1, 5), p2), lambda: alone(llm, prompt(2, 5), pb)]))
    for s in busy:
        list(s)
    assert got == want


def test_preemption_lets_every_request_finish_with_its_output_alone(tiny_chat_path: Path) -> None:
    # 14 blocks of 8 tokens; 6 requests of 10 + 40 tokens need 7 blocks each (the n=2 one 13)
    with make_llm(tiny_chat_path, kv_blocks=14, block_tokens=8, kv_type="f32") as small:
        cases = [(prompt(i, 10)[: 40], SamplingParams(max_tokens=40, temperature=0.9, seed=i, ignore_eos=True,
                                                       n=1 + (i == 2)))
                 for i in range(6)]
        cases = [(small.tokenize(p)[:10], sp) for p, sp in cases]
        want = [alone(small, p, sp) for p, sp in cases]
        streams = [small.submit(p, sp, priority=("low", "normal", "high")[i % 3]) for i, (p, sp) in
                   enumerate(cases)]
        got = [[o.token_ids for o in fold(s, samples=sp.samples, n=sp.n, logprobs=False)]
               for s, (_, sp) in zip(streams, cases, strict=True)]
        assert got == want
        st = small.engine.stats()
        assert st.preempted > 0, "the pool was too small for all at once: someone should have been preempted"
        assert all(len(ids) == 40 for g in got for ids in g), "every sample ran to its max_tokens"
        assert sum(s.metrics.preemptions for s in streams) == st.preempted  # type: ignore[union-attr]
        assert_pool_free(small)


def test_a_request_that_cannot_fit_alone_is_refused_at_submit(tiny_chat_path: Path) -> None:
    with make_llm(tiny_chat_path, kv_blocks=4, block_tokens=8) as small:
        with pytest.raises(ValueError, match="KV pool holds 32 tokens"):
            small.submit(list(range(1, 31)), SamplingParams(max_tokens=5, n=3))


def test_closing_a_stream_frees_its_blocks_within_one_step(llm: LLM) -> None:
    other = llm.submit(prompt(3, 5), SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    s = llm.submit(prompt(1, 9), SamplingParams(max_tokens=200, temperature=0, ignore_eos=True, n=2))
    next(s)
    next(s)
    held = llm.model.kv_free_blocks
    before = llm.engine.stats().steps
    s.close()
    assert llm.engine.stats().steps - before <= 1
    assert llm.model.kv_free_blocks > held
    # an abort by id (another thread, a server) ends the other stream the same way
    llm.engine.abort(other.request_id)
    rest = list(other)
    assert all(c.finish_reason is None for c in rest)
    deadline = time.monotonic() + 10
    while llm.model.sequences() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_chunked_prefill_keeps_decoding_streams_going(tiny_chat_path: Path, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    with make_llm(tiny_chat_path, max_batch_tokens=64, kv_type="f32") as m:
        long_ids = (m.tokenize(prompt(0, 400)) * 3)[:700]
        steps = BatchSizes(m, monkeypatch)
        decoding = [m.submit(prompt(i, 4), SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
                    for i in range(4)]
        for s in decoding:
            next(s)  # all four are decoding
        first = len(steps.sizes)
        joiner = m.submit(long_ids, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
        ids = [o.token_ids for o in fold(joiner, samples=1, n=1, logprobs=False)]
        for s in decoding:
            list(s)
        during = steps.sizes[first:]
        assert max(during) <= 64, "no step is bigger than the token budget"
        assert sum(1 for n in during if n > 4) >= 700 // 64, "the prompt came in chunks"
        # the chunks change nothing: the same tokens as a prompt computed in one go
        with make_llm(tiny_chat_path, max_batch_tokens=1024, kv_type="f32") as whole:
            assert alone(whole, long_ids, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)) == ids
        # and the decoding streams got a token in every step while the prompt was prefilled
        assert all(n >= 4 for n in during[: 700 // 64])


def test_high_priority_goes_first_and_low_priority_still_finishes(tiny_chat_path: Path) -> None:
    with make_llm(tiny_chat_path, max_seqs=2, kv_type="f32") as m:
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        blockers = [m.submit(prompt(i, 4), params) for i in range(2)]
        next(blockers[0])  # saturated: two running, the rest waits
        normal = [m.submit(prompt(i, 5), params, priority="normal") for i in range(6)]
        high = [m.submit(prompt(i, 6), params, priority="high") for i in range(6)]
        low = [m.submit(prompt(i, 7), params, priority="low") for i in range(2)]
        for s in blockers + normal + high + low:
            list(s)
        ttft = {name: statistics.median(s.metrics.time_to_first_token for s in group)  # type: ignore[union-attr]
                for name, group in (("normal", normal), ("high", high))}
        assert ttft["high"] < ttft["normal"], ttft
        assert all(s.metrics is not None and s.metrics.completion_tokens == 12 for s in low)


def test_aging_lets_a_low_request_overtake_a_stream_of_normal_ones(tiny_chat_path: Path) -> None:
    cfg = SchedulerConfig(max_seqs=1, aging_s=0.05)
    with make_llm(tiny_chat_path, kv_type="f32") as m:
        engine = Engine(m.model, m.tokenizer, config=cfg)
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        ids = m.tokenize(prompt(1, 4))
        first = engine.submit(ids, params)
        next(first)
        low = engine.submit(ids, params, priority="low")
        normals = []
        for _ in range(15):  # normal requests keep arriving while low waits
            normals.append(engine.submit(ids, params))
            time.sleep(0.02)
        list(low)
        done_before_low = sum(1 for s in normals if s.finished)
        for s in [first, *normals]:
            list(s)
        engine.close()
        assert done_before_low < len(normals), "low waited behind every normal request: no aging"


def test_queue_full_and_timeouts(tiny_chat_path: Path) -> None:
    with make_llm(tiny_chat_path, max_seqs=1, max_waiting=2) as m:
        params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        running = m.submit(prompt(0, 3), params)
        next(running)
        waiting = [m.submit(prompt(1, 3), params), m.submit(prompt(2, 3), params)]
        with pytest.raises(QueueFull):
            m.submit(prompt(3, 3), params)
        for s in [running, *waiting]:
            s.close()
        t = m.submit(prompt(4, 3), params.with_(max_tokens=1000), timeout=0.002)
        with pytest.raises(RequestTimeout):
            list(t)
        with pytest.raises(ValueError, match="timeout"):
            m.submit(prompt(4, 3), params, timeout=-1)
        with pytest.raises(ValueError, match="priority"):
            m.submit(prompt(4, 3), params, priority="urgent")
        assert_pool_free(m)


def test_async_engine_streams_concurrently(llm: LLM) -> None:
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    want = [alone(llm, prompt(i, 5), params)[0] for i in range(4)]

    async def main() -> list[list[int]]:
        eng = AsyncEngine(llm.engine)

        async def one(i: int) -> list[int]:
            out: list[int] = []
            stream = await eng.submit(llm.tokenize(prompt(i, 5)), params)
            async for c in stream:
                out.extend(c.token_ids)
            return out

        return list(await asyncio.gather(*(one(i) for i in range(4))))

    assert asyncio.run(main()) == want


def test_structured_output_holds_on_a_random_model(llm: LLM) -> None:
    """Whatever a random model prefers, the grammar decides what can come out."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    import json

    import jsonschema

    for seed in range(6):
        out = llm.generate(prompt(seed, 4), SamplingParams(max_tokens=40, temperature=1.0, seed=seed,
                                                            grammar=Grammar.json_schema(schema)))[0]
        assert out.finish_reason == "stop", out.text  # type: ignore[union-attr]
        jsonschema.validate(json.loads(out.text), schema)  # type: ignore[union-attr]
    pattern = r"[0-9]{3}-[a-z]{2}"
    digits = llm.generate(prompt(1, 3), SamplingParams(max_tokens=20, seed=3, grammar=Grammar.regex(pattern)))
    assert re.fullmatch(pattern, digits[0].text)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="grammar"):
        llm.generate("x", SamplingParams(grammar=Grammar.lark("start: foo")))
    with pytest.raises(ValueError, match="schema"):
        llm.generate("x", SamplingParams(grammar=Grammar.json_schema({"type": "objekt"})))


def test_stats_snapshot(llm: LLM) -> None:
    s = llm.submit(prompt(2, 4), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    chunks: list[StreamChunk] = list(s)
    assert sum(len(c.token_ids) for c in chunks) == 8
    st = llm.engine.stats()
    m = s.metrics
    assert m is not None and m.completion_tokens == 8 and len(m.inter_token_latencies) == 7
    assert m.time_to_first_token is not None and m.time_to_first_token > 0
    assert st.kv_blocks_used == 0 and st.kv_blocks_free == llm.model.kv_blocks and st.running == 0
    assert any(r.request_id == s.request_id for r in st.recent) and st.steps > 0


def test_the_throughput_window_stays_bounded_without_stats_calls(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The (time, tokens) record behind ``tokens_per_second`` keeps its window even when nobody asks for
    stats (a server nobody scrapes): it once grew by a tuple per step, forever."""
    import nlm_native.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "TPS_WINDOW_S", 0.05)
    eng = llm.engine
    for i in range(6):
        list(llm.submit(prompt(i, 3), SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)))
        time.sleep(0.06)  # past the window: what came before must go
    with eng._cv:
        kept = len(eng._generated)
    assert kept <= 6, f"{kept} steps kept, more than one request's within the window"


class OnePromptCache:
    """The smallest cache behind the seam: keeps the blocks of each prompt it sees (a fork) and lends
    them, truncated to all but the last token, to a request with the same prompt."""

    def __init__(self) -> None:
        self.kept: dict[tuple[int, ...], int] = {}
        self.events: list[str] = []
        self.hits = 0

    def lookup(self, model: Any, prompt: list[int]) -> tuple[int, int] | None:
        seq = self.kept.get(tuple(prompt))
        if seq is None:
            return None
        self.hits += 1
        mine = model.fork(seq)
        model.truncate(mine, len(prompt) - 1)
        return mine, len(prompt) - 1

    def on_event(self, model: Any, event: Any) -> None:
        self.events.append(event.kind)
        if event.kind == "prefilled" and event.tokens not in self.kept:
            self.kept[event.tokens] = model.fork(event.seq)


def test_a_prefix_cache_plugs_in_at_admission(tiny_chat_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = OnePromptCache()
    with make_llm(tiny_chat_path, kv_type="f32") as m:
        m.engine.close()
        engine = Engine(m.model, m.tokenizer, cache=cache)
        ids = m.tokenize(prompt(3, 30))
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        first = [c for c in engine.submit(ids, params)]
        sizes = BatchSizes(m, monkeypatch)
        again = engine.submit(ids, params)
        second = list(again)
        assert [t for c in first for t in c.token_ids] == [t for c in second for t in c.token_ids]
        assert cache.hits == 1 and again.metrics is not None and again.metrics.cached_tokens == len(ids) - 1
        assert sizes.sizes[0] == 1, "only the last prompt token was computed"
        assert cache.events.count("prefilled") == 2 and "freed" in cache.events
        engine.close()
        for seq in cache.kept.values():
            m.model.free(seq)
        assert_pool_free(m)
