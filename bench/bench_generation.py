"""End-to-end text generation through the high-level APIs: nlm_native.LLM vs llama-cpp-python's Llama.

    python bench/bench_generation.py [MODEL.gguf] [--threads 2] [--max-tokens 128] [--n4-max-tokens 64] [--reps 3]
        [--full] [--no-llamacpp]

Both engines get the same prompt text (a ~100-token code prompt, and a chat prompt
rendered by the model's chat template) through ``create_completion`` and generate
exactly ``--max-tokens`` tokens: ours with ``ignore_eos=True``, llama.cpp with a
``logit_bias`` of -1e9 on every end-of-generation token (llama-cpp-python applies it
in a Python logits processor: its cost is in llama.cpp's numbers). The tokens each
engine generated are counted and reported. Cases, each for greedy (temperature 0) and
sampled (temperature 0.8, top_p 0.95, top_k 40, min_p 0.05, repeat_penalty 1.1):

* streaming: time to the first chunk with non-empty text (TTFT) and decode tokens/s
  after it;
* non-streaming: total time of the call;
* ``n=4`` samples of ``--n4-max-tokens`` tokens (sampled only): ours in one request (``SamplingParams(n=4)``: the
  prompt is prefilled once and forked, the 4 samples decode in one batch per step)
  vs llama.cpp's 4 sequential completions (it has no n > 1; its prefix cache lets the
  last 3 reuse the prompt). Aggregate tokens/s.

Also the time outside the core per generated token: for ours (call time - time in
``Model.forward``) / tokens, the Python layer's overhead (tokenizing, sampling,
detokenizing, stop matching, response dicts); for llama.cpp (call time - time in
``llama_decode``) / tokens, which includes its sampler chain (in C) and its Python.

By default (about 3.5 minutes on 2 cores) every case runs on the code prompt and greedy
streaming on the chat prompt (``--full``: every case on both), and the ``n=4`` samples
are ``--n4-max-tokens`` (64) tokens each. ``--reps`` repetitions alternate the
engines case by case; medians are reported, ratios as "above 1: we are faster".
Writes ``bench/results/generation.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nlm_native import LLM, SamplingParams

REPO = Path(__file__).resolve().parents[1]

CODE_PROMPT = '''\
import heapq
from dataclasses import dataclass, field


@dataclass(order=True)
class Task:
    priority: int
    name: str = field(compare=False)


class Scheduler:
    """A priority queue of tasks; the lowest priority runs first."""

    def __init__(self) -> None:
        self._heap: list[Task] = []

    def push(self, task: Task) -> None:
        heapq.heappush(self._heap, task)

    def pop(self) -> Task:
'''

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a senior Python developer. Answer with code and a short explanation."},
    {"role": "user", "content": "Write a function `merge_intervals(intervals: list[tuple[int, int]])` that merges "
                                "overlapping closed intervals and returns them sorted by start. Handle an empty "
                                "list, intervals given in any order, and intervals that only touch at an endpoint. "
                                "Then show three example calls with their output."},
]

GREEDY: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
SAMPLED: dict[str, Any] = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
MODES = {"greedy": GREEDY, "sampled": SAMPLED}
N_PARALLEL = 4


@dataclass
class Run:
    """One timed call."""

    total_s: float
    n_tokens: int  # generated (summed over samples for n > 1)
    n_prompt: int
    core_s: float  # time inside the core: our Model.forward / llama_decode
    ttft_s: float | None = None  # streaming: to the first chunk with non-empty text
    first_chunks: int = 0  # streaming: chunks up to and including that one (about the tokens)
    text: str = ""

    @property
    def decode_tok_s(self) -> float:
        return (self.n_tokens - self.first_chunks) / (self.total_s - (self.ttft_s or 0.0))

    @property
    def tok_s(self) -> float:
        return self.n_tokens / self.total_s

    @property
    def outside_ms_per_token(self) -> float:
        return (self.total_s - self.core_s) / self.n_tokens * 1e3


def consume_stream(chunks: Iterator[dict[str, Any]], t0: float) -> tuple[str, float | None, int, dict | None]:
    """Drain a completion stream: its text, TTFT, chunks up to the first text, and any usage chunk."""
    parts: list[str] = []
    ttft: float | None = None
    first = 0
    n = 0
    usage = None
    for c in chunks:
        if c.get("usage"):
            usage = c["usage"]
        for ch in c["choices"]:
            n += 1
            if ch["text"]:
                if ttft is None:
                    ttft, first = time.perf_counter() - t0, n
                parts.append(ch["text"])
    return "".join(parts), ttft, first, usage


class Ours:
    name = "nlm_native"

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        self.llm = LLM(path, n_threads=threads, n_ctx=n_ctx)
        self.core_s = 0.0
        forward = self.llm.model.forward

        def timed_forward(batch: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return forward(batch, **kw)
            finally:
                self.core_s += time.perf_counter() - t0

        self.llm.model.forward = timed_forward  # type: ignore[method-assign]

    @property
    def eog_ids(self) -> set[int]:
        return set(self.llm.eog_ids)

    def complete(self, prompt: str, mode: dict[str, Any], max_tokens: int, seed: int, stream: bool) -> Run:
        self.core_s = 0.0
        kw = {**mode, "max_tokens": max_tokens, "seed": seed, "ignore_eos": True}
        t0 = time.perf_counter()
        if stream:
            it = self.llm.create_completion(prompt, stream=True, stream_options={"include_usage": True}, **kw)
            text, ttft, first, usage = consume_stream(it, t0)
            total = time.perf_counter() - t0
            assert usage is not None
            return Run(total, usage["completion_tokens"], usage["prompt_tokens"], self.core_s, ttft, first, text)
        r = self.llm.create_completion(prompt, **kw)
        total = time.perf_counter() - t0
        return Run(total, r["usage"]["completion_tokens"], r["usage"]["prompt_tokens"], self.core_s,
                   text=r["choices"][0]["text"])

    def parallel(self, prompt: str, mode: dict[str, Any], max_tokens: int, seed: int, n: int) -> Run:
        self.core_s = 0.0
        params = SamplingParams(**mode, max_tokens=max_tokens, seed=seed, ignore_eos=True, n=n)
        t0 = time.perf_counter()
        outs = self.llm.generate(prompt, params)
        total = time.perf_counter() - t0
        return Run(total, sum(len(o.token_ids) for o in outs), len(self.llm.prompt_ids(prompt)), self.core_s)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int, eog_ids: set[int],
                 extra_bufts: bool) -> None:
        from compare_llamacpp import load_llamacpp

        self.llm = load_llamacpp(path, threads, n_ctx, n_batch, extra_bufts)
        self.bias = {t: -1e9 for t in sorted(eog_ids)}
        self.core_s = 0.0
        self.sampled = 0
        decode, sample = self.llm._ctx.decode, self.llm.sample

        def timed_decode(batch: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return decode(batch)
            finally:
                self.core_s += time.perf_counter() - t0

        def counted_sample(*a: Any, **k: Any) -> int:
            self.sampled += 1
            return sample(*a, **k)

        self.llm._ctx.decode = timed_decode  # type: ignore[method-assign]
        self.llm.sample = counted_sample  # type: ignore[method-assign]

    def _call(self, prompt: str, mode: dict[str, Any], max_tokens: int, seed: int, **kw: Any) -> Any:
        return self.llm.create_completion(prompt, max_tokens=max_tokens, seed=seed, logit_bias=self.bias,
                                          **mode, **kw)

    def complete(self, prompt: str, mode: dict[str, Any], max_tokens: int, seed: int, stream: bool,
                 fresh: bool = True) -> Run:
        if fresh:
            self.llm.reset()  # no prefix-cache hit on the previous call's prompt: a full prefill, as ours
        self.core_s, self.sampled = 0.0, 0
        t0 = time.perf_counter()
        if stream:
            text, ttft, first, _ = consume_stream(self._call(prompt, mode, max_tokens, seed, stream=True), t0)
            total = time.perf_counter() - t0
            return Run(total, self.sampled, len(self.llm.tokenize(prompt.encode(), special=True)), self.core_s,
                       ttft, first, text)
        r = self._call(prompt, mode, max_tokens, seed)
        total = time.perf_counter() - t0
        assert r["usage"]["completion_tokens"] == self.sampled, (r["usage"], self.sampled)
        return Run(total, self.sampled, r["usage"]["prompt_tokens"], self.core_s, text=r["choices"][0]["text"])

    def parallel(self, prompt: str, mode: dict[str, Any], max_tokens: int, seed: int, n: int) -> Run:
        runs = [self.complete(prompt, mode, max_tokens, seed + i, stream=False, fresh=i == 0) for i in range(n)]
        return Run(sum(r.total_s for r in runs), sum(r.n_tokens for r in runs), runs[0].n_prompt,
                   sum(r.core_s for r in runs))


Engine = Ours | LlamaCpp


@dataclass
class Case:
    prompt: str  # "code" | "chat"
    mode: str  # "greedy" | "sampled"
    kind: str  # "stream" | "total" | "n4"

    @property
    def key(self) -> str:
        return f"{self.prompt}/{self.mode}/{self.kind}"


def cases(full: bool) -> list[Case]:
    out = [Case(p, m, "stream") for p in ("code", "chat") for m in MODES if full or (p, m) != ("chat", "sampled")]
    out += [Case(p, m, "total") for p in (("code", "chat") if full else ("code",)) for m in MODES]
    out += [Case(p, "sampled", "n4") for p in (("code", "chat") if full else ("code",))]
    return out


def runner(e: Engine, case: Case, prompt: str, max_tokens: int, n4_max_tokens: int) -> Callable[[int], Run]:
    mode = MODES[case.mode]
    if case.kind == "n4":
        return lambda seed: e.parallel(prompt, mode, n4_max_tokens, seed, N_PARALLEL)
    return lambda seed: e.complete(prompt, mode, max_tokens, seed, stream=case.kind == "stream")


def median(runs: list[Run], f: Callable[[Run], float | None]) -> float | None:
    vals = [v for v in map(f, runs) if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[Run], kind: str) -> dict[str, Any]:
    s: dict[str, Any] = {
        "n_tokens": sorted({r.n_tokens for r in runs}),
        "n_prompt": runs[0].n_prompt,
        "total_s": median(runs, lambda r: r.total_s),
        "tok_s": median(runs, lambda r: r.tok_s),
        "outside_core_ms_per_token": median(runs, lambda r: r.outside_ms_per_token),
        "core_s": median(runs, lambda r: r.core_s),
    }
    if kind == "stream":
        s["ttft_s"] = median(runs, lambda r: r.ttft_s)
        s["decode_tok_s"] = median(runs, lambda r: r.decode_tok_s)
        s["first_text_chunk"] = sorted({r.first_chunks for r in runs})
    s["runs"] = [{k: v for k, v in asdict(r).items() if k != "text"} for r in runs]
    return s


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(ours: float | None, theirs: float | None, higher_better: bool) -> str:
    if not ours or not theirs:
        return "-"
    return f"{(ours / theirs if higher_better else theirs / ours):.2f}x"


def print_table(results: dict[str, Any], have_theirs: bool) -> None:
    print("| case | ours | llama.cpp | ratio |")
    print("|---|---:|---:|---:|")

    def row(label: str, key: str, field: str, spec: str, higher_better: bool, scale: float = 1.0) -> None:
        o = results[key]["nlm_native"].get(field)
        t = results[key]["llama.cpp"].get(field) if have_theirs else None
        o, t = (o * scale if o is not None else None), (t * scale if t is not None else None)
        print(f"| {label} | {fmt(o, spec)} | {fmt(t, spec)} | {ratio(o, t, higher_better)} |")

    for key, res in results.items():
        p, m, kind = key.split("/")
        o = res["nlm_native"]
        t = res["llama.cpp"] if have_theirs else None
        toks = f"{'/'.join(map(str, o['n_tokens']))} | {'/'.join(map(str, t['n_tokens'])) if t else '-'} | "
        if kind == "stream":
            row(f"{p} {m} stream: TTFT ms", key, "ttft_s", ".0f", False, 1e3)
            row(f"{p} {m} stream: decode tok/s after 1st", key, "decode_tok_s", ".1f", True)
            row(f"{p} {m} stream: outside-core ms/token", key, "outside_core_ms_per_token", ".2f", False)
            print(f"| {p} {m} stream: tokens generated (prompt {o['n_prompt']}) | {toks}|")
        elif kind == "total":
            row(f"{p} {m} non-stream: total s", key, "total_s", ".2f", False)
            row(f"{p} {m} non-stream: outside-core ms/token", key, "outside_core_ms_per_token", ".2f", False)
            print(f"| {p} {m} non-stream: tokens generated | {toks}|")
        else:
            row(f"{p} {m} n={N_PARALLEL}: aggregate tok/s", key, "tok_s", ".1f", True)
            row(f"{p} {m} n={N_PARALLEL}: total s", key, "total_s", ".2f", False)
            row(f"{p} {m} n={N_PARALLEL}: outside-core ms/token", key, "outside_core_ms_per_token", ".2f", False)
            print(f"| {p} {m} n={N_PARALLEL}: tokens generated | {toks}|")
    print("\nratio: above 1, we are faster (rates ours / llama.cpp, times llama.cpp / ours). "
          f"n={N_PARALLEL}: ours one batched request, llama.cpp {N_PARALLEL} sequential completions. "
          "outside-core: (call time - time in Model.forward / llama_decode) / tokens.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n4-max-tokens", type=int, default=64, help="max_tokens of each of the n=4 samples")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full", action="store_true",
                    help="every case on both prompts (default: the chat prompt streams greedy only)")
    ap.add_argument("--no-llamacpp", action="store_true", help="measure nlm_native only")
    ap.add_argument("--llamacpp-no-extra-bufts", action="store_true",
                    help="load llama.cpp with use_extra_bufts=False (no AMX / repacked weight buffers)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "generation.json"))
    args = ap.parse_args()
    if args.model:
        path = args.model
    else:
        from nlm_native.core.fetch import fetch

        path = str(fetch())

    t_start = time.perf_counter()
    load_start = list(os.getloadavg())  # the machine may be shared: a busy start explains odd numbers
    ours = Ours(path, args.threads, args.n_ctx)
    engines: list[Engine] = [ours]
    if not args.no_llamacpp:
        try:
            engines.append(LlamaCpp(path, args.threads, args.n_ctx, 512, ours.eog_ids,
                                    extra_bufts=not args.llamacpp_no_extra_bufts))
        except ImportError:
            print("llama-cpp-python not installed: measuring nlm_native only", file=sys.stderr)
    have_theirs = len(engines) == 2
    prompts = {"code": CODE_PROMPT, "chat": ours.llm.apply_chat_template(CHAT_MESSAGES)}

    for e in engines:  # warm up: weights paged in, threads started, both sampling paths
        for mode in MODES.values():
            e.complete(prompts["code"], mode, 8, 0, stream=True)

    todo = cases(args.full)
    runs: dict[str, dict[str, list[Run]]] = {c.key: {e.name: [] for e in engines} for c in todo}
    for rep in range(args.reps):
        for c in todo:  # alternate the engines in every case of every repetition
            for e in engines:
                runs[c.key][e.name].append(runner(e, c, prompts[c.prompt], args.max_tokens, args.n4_max_tokens)(rep))
        print(f"rep {rep + 1}/{args.reps} done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr)

    results = {c.key: {name: summarize(rs, c.kind) for name, rs in runs[c.key].items()} for c in todo}
    agree: dict[str, Any] = {}
    if have_theirs:  # side check: greedy text of both engines (printed, never fatal)
        for c in todo:
            if c.mode == "greedy":
                a, b = runs[c.key]["nlm_native"][0].text, runs[c.key]["llama.cpp"][0].text
                agree[c.key] = {"equal": a == b, "common_prefix_chars": common_prefix(a, b), "chars": [len(a), len(b)]}
    print_table(results, have_theirs)
    for key, v in agree.items():
        print(f"greedy text {key}: {'identical' if v['equal'] else 'differs'} "
              f"(common prefix {v['common_prefix_chars']} of {v['chars']} chars)")

    out = {
        "model": os.path.basename(path),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "max_tokens": args.max_tokens,
        "n4_max_tokens": args.n4_max_tokens,
        "reps": args.reps,
        "n_parallel": N_PARALLEL,
        "modes": MODES,
        "llamacpp": have_theirs,
        "llamacpp_eog_bias": sorted(ours.eog_ids) if have_theirs else None,
        "greedy_text_agreement": agree,
        "wall_s": time.perf_counter() - t_start,
        "loadavg_start_end": [load_start, list(os.getloadavg())],
        "cases": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
