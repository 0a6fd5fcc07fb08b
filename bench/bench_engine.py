"""Concurrent-stream serving benchmark: nlm_native's engine (in-process) vs llama.cpp's llama-server.

    python bench/bench_engine.py [--model M.gguf] [--streams 1,4,8,16] [--tokens 128] [--threads 2]
        [--sampled] [--json bench/results/engine.json] [--skip-llama | --skip-ours]
        [--llama-server PATH] [--build-llama-server DIR] [--llama-ctx N] [--n-ctx 4096]
        [--prefill-gap [--join-tokens 2000]]

For every load level S in ``--streams``, S streams start together (a barrier), each on its own
thread, each a distinct short coding prompt asking for exactly ``--tokens`` tokens (``ignore_eos``).
Greedy by default; ``--sampled`` uses temperature 0.8, top_p 0.95, seed = stream index on both
systems (llama-server also gets top_k 0 and min_p 0, so that it does the same work as ours).
Measured per (system, S), from client-side ``time.perf_counter`` stamps of every chunk that
carries a token:

* aggregate tok/s: all generated tokens / (last token - first submit);
* TTFT p50/p95: first token - submit, over the S streams;
* ITL p50/p95: gaps between consecutive tokens of a stream, over all streams.

nlm_native: ``LLM.submit`` -> ``RequestStream`` (``n_threads``, ``n_ctx=4096``,
``max_batch_tokens=256``, ``max_seqs=64``). Also reported: the engine's own medians
(``RequestMetrics``) and ``host_share``, the part of engine step time spent outside
``Model.forward`` (Python scheduling + sampling): ``d(host_seconds) / d(step_seconds)`` per level
(the target: under 10% at 16 sampled streams, i.e. ``--sampled``).

llama-server: started on loopback with ``-np max(S) --cont-batching -c ctx -t threads --no-warmup``
(binary: ``--llama-server``, else the default below, else built by ``--build-llama-server DIR``
from the llama-cpp-python sdist's vendor/llama.cpp). This build splits ``-c`` across the slots
(with an explicit ``-np`` the KV cache is not unified), so ``ctx = slots * per-slot context``.
Flash attention is left at its default (auto).
Load is streamed ``POST /v1/completions`` over http.client, with ``cache_prompt: false``
(nlm_native has no prefix cache, and the same prompts recur across levels). Every SSE event
before the one carrying ``finish_reason`` holds one token; the count is checked against the
final event's ``usage.completion_tokens`` (``event_mismatch`` in the JSON counts disagreements).

Both systems get one warm-up request first; they run one after the other, never together.

``--prefill-gap``: 4 greedy streams decode while a 2,000-token prompt joins; the largest gap between
two tokens of a decoding stream during its prefill, with the step budget at 256 tokens (chunked
prefill) and at 4,096 (the prompt in one step).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

LLAMA_VERSION = "0.3.36"
BUILD_DIR = Path("/work/llama-server")
SERVER_REL = Path(f"llama_cpp_python-{LLAMA_VERSION}/vendor/llama.cpp/build/bin/llama-server")
PROMPTS = [
    "def fibonacci(n):",
    "# Python function that checks whether a string is a palindrome\ndef",
    "Write a SQL query that returns the ten most recent orders per customer.",
    "// A C function that reverses a singly linked list in place\n",
    "class LRUCache:\n    def __init__(self, capacity: int):",
    "Explain the difference between a process and a thread in one paragraph.",
    "import numpy as np\n\ndef softmax(x):",
    "#!/bin/bash\n# Find the five largest files under the current directory\n",
    "fn main() {\n    // read lines from stdin and print them sorted\n",
    "Write a JavaScript debounce function with a configurable delay.",
    "def quicksort(arr: list[int]) -> list[int]:",
    "# Parse a CSV file and sum the values of the 'amount' column\nimport csv\n",
    "func reverse(s string) string {",
    "Implement binary search in Java and explain its time complexity.",
    "SELECT name, COUNT(*) FROM employees GROUP BY",
    "async function fetchJson(url) {",
]


@dataclass
class Stream:
    submit: float = 0.0
    times: list[float] = field(default_factory=list)  # arrival of every token
    server: dict[str, Any] = field(default_factory=dict)  # what the system itself reported


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) * 1e3 if xs else None


def run_load(n: int, worker: Callable[[int, Stream], None]) -> tuple[list[Stream], float]:
    """``n`` workers, started together; returns their streams and the wall time of the level."""
    out = [Stream() for _ in range(n)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            worker(i, out[i])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, max(s.times[-1] for s in out if s.times) - min(s.submit for s in out)


def summarize(system: str, streams: list[Stream], wall: float, tokens: int) -> dict[str, Any]:
    total = sum(len(s.times) for s in streams)
    ttft = [s.times[0] - s.submit for s in streams if s.times]
    itl = [b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False)]
    return {"system": system, "streams": len(streams), "tokens": total, "expected_tokens": tokens * len(streams),
            "wall_s": wall, "tok_s": total / wall, "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
            "itl_p50_ms": pct(itl, 50), "itl_p95_ms": pct(itl, 95)}


def sampling(args: argparse.Namespace, i: int, tokens: int) -> dict[str, Any]:
    if args.sampled:
        return {"max_tokens": tokens, "temperature": 0.8, "top_p": 0.95, "seed": i, "ignore_eos": True}
    return {"max_tokens": tokens, "temperature": 0.0, "ignore_eos": True}


# --- nlm_native ----------------------------------------------------------------------------------

def bench_ours(args: argparse.Namespace, model: Path, levels: list[int]) -> list[dict[str, Any]]:
    from nlm_native import LLM, SamplingParams

    llm = LLM(model, n_threads=args.threads, n_ctx=args.n_ctx, kv_blocks=None, max_batch_tokens=256, max_seqs=64)
    eng = llm.engine

    def worker(tokens: int) -> Callable[[int, Stream], None]:
        def work(i: int, st: Stream) -> None:
            params = SamplingParams(**sampling(args, i, tokens))
            st.submit = time.perf_counter()
            stream = llm.submit(PROMPTS[i % len(PROMPTS)], params)
            for chunk in stream:
                if chunk.token_ids:
                    now = time.perf_counter()
                    st.times.extend([now] * len(chunk.token_ids))
            m = stream.metrics
            if m is not None:
                st.server = {"ttft": m.time_to_first_token, "itl": m.inter_token_latencies,
                             "prompt_tokens": m.prompt_tokens, "preemptions": m.preemptions}
        return work

    rows = []
    try:
        run_load(1, worker(min(args.tokens, 16)))  # warm-up
        for n in levels:
            s0, h0, k0 = eng.step_seconds, eng.host_seconds, eng.stats().steps
            streams, wall = run_load(n, worker(args.tokens))
            ds, dh = eng.step_seconds - s0, eng.host_seconds - h0
            row = summarize("nlm_native", streams, wall, args.tokens)
            ttfts = [s.server["ttft"] for s in streams if s.server.get("ttft") is not None]
            itls = [x for s in streams for x in s.server.get("itl", [])]
            row.update(engine_ttft_p50_ms=pct(ttfts, 50), engine_itl_p50_ms=pct(itls, 50),
                       steps=eng.stats().steps - k0, step_s=ds, host_s=dh, host_share=dh / ds if ds else None,
                       preemptions=sum(s.server.get("preemptions", 0) for s in streams),
                       prompt_tokens=[s.server.get("prompt_tokens") for s in streams])
            rows.append(row)
            print(fmt(row), flush=True)
    finally:
        llm.close()
    return rows


def bench_prefill_gap(args: argparse.Namespace, model: Path, budget: int) -> dict[str, Any]:
    """4 greedy streams decode; a ``--join-tokens`` prompt joins them. The largest gap between two tokens
    of a decoding stream while the prompt is computed, with a step budget of ``budget`` tokens (a budget
    above the prompt's length computes it in one step: no chunking)."""
    from nlm_native import LLM, SamplingParams

    llm = LLM(model, n_threads=args.threads, n_ctx=args.n_ctx, max_batch_tokens=budget)
    try:
        ids = (llm.tokenize("\n".join(PROMPTS)) * 200)[: args.join_tokens]
        params = SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True)
        streams = [llm.submit(PROMPTS[i], params) for i in range(4)]
        times: list[list[float]] = [[] for _ in streams]

        def read(i: int) -> None:
            for c in streams[i]:
                if c.token_ids:
                    times[i].append(time.perf_counter())

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(4)]
        for t in readers:
            t.start()
        while min(len(t) for t in times) < 8:  # all four are decoding
            time.sleep(0.01)
        t0 = time.perf_counter()
        joiner = llm.submit(ids, SamplingParams(max_tokens=1, temperature=0))
        list(joiner)
        t1 = time.perf_counter()
        time.sleep(0.3)
        for s in streams:
            s.close()
        for t in readers:
            t.join()
        gaps = [b - a for ts in times for a, b in zip(ts, ts[1:], strict=False) if b > t0 and a < t1]
        row = {"budget": budget, "join_tokens": len(ids), "prefill_s": t1 - t0,
               "max_gap_ms": max(gaps) * 1e3 if gaps else None, "p50_gap_ms": pct(gaps, 50)}
        print(f"prefill gap: budget {budget:>5}  prompt {len(ids)} tokens in {t1 - t0:.2f} s  largest "
              f"inter-token gap of the 4 decoding streams {row['max_gap_ms']:.0f} ms (p50 {row['p50_gap_ms']:.0f})",
              flush=True)
        return row
    finally:
        llm.close()


# --- llama-server --------------------------------------------------------------------------------

def build_llama_server(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    binary = d / SERVER_REL
    if binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_VERSION}", "-d", str(d)], check=True)
    sdist = next(d.glob(f"llama[_-]cpp[_-]python-{LLAMA_VERSION}.tar.gz"))
    with tarfile.open(sdist) as tf:
        tf.extractall(d, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    src = binary.parents[2]
    subprocess.run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON"], cwd=src, check=True)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "-j", "2"], cwd=src, check=True)
    print(f"built {binary}", flush=True)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 180.0,
                name: str = "llama-server") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{name} not healthy after {timeout:.0f}s; log: {log}")


def sse_events(port: int, body: dict[str, Any], st: Stream) -> Iterator[tuple[float, dict[str, Any]]]:
    """POST a streamed ``/v1/completions`` (``st.submit`` stamped); every event with its arrival time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    data = json.dumps(body)
    st.submit = time.perf_counter()
    conn.request("POST", "/v1/completions", data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"the server answered {resp.status}: {resp.read()[:500]!r}")
    try:
        for raw in resp:  # SSE: "data: {...}" lines, blank lines between events
            now = time.perf_counter()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            ev = json.loads(payload)
            if "error" in ev:
                raise RuntimeError(f"stream error: {ev['error']}")
            yield now, ev
    finally:
        conn.close()


def http_stream(port: int, body: dict[str, Any], st: Stream) -> None:
    for now, ev in sse_events(port, body, st):
        if ev["choices"][0].get("finish_reason") is None:
            st.times.append(now)  # one event per token
        else:
            st.server = {"usage": ev.get("usage", {}), "timings": ev.get("timings", {})}


def bench_llama(args: argparse.Namespace, model: Path, levels: list[int], out_dir: Path) -> list[dict[str, Any]]:
    slots = max(levels)
    port = free_port()
    cmd = llama_server_cmd(args, model, port, slots, args.llama_ctx or slots * per_slot_ctx(args.tokens))
    log = out_dir / "llama-server.log"
    print("$ " + " ".join(cmd), flush=True)
    rows = []
    with log.open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_health(proc, port, log)

            def worker(tokens: int) -> Callable[[int, Stream], None]:
                def work(i: int, st: Stream) -> None:
                    body = {"prompt": PROMPTS[i % len(PROMPTS)], "stream": True, "cache_prompt": False,
                            **sampling(args, i, tokens)}
                    if args.sampled:
                        body.update(top_k=0, min_p=0.0)
                    http_stream(port, body, st)
                return work

            run_load(1, worker(min(args.tokens, 16)))  # warm-up
            for n in levels:
                streams, wall = run_load(n, worker(args.tokens))
                row = summarize("llama-server", streams, wall, args.tokens)
                usage = [s.server.get("usage", {}).get("completion_tokens") for s in streams]
                tim = [s.server.get("timings", {}) for s in streams]
                row.update(usage_tokens=sum(u or 0 for u in usage),
                           event_mismatch=sum(u != len(s.times) for u, s in zip(usage, streams, strict=True)),
                           server_prompt_ms_p50=pct([t["prompt_ms"] / 1e3 for t in tim if "prompt_ms" in t], 50),
                           server_itl_p50_ms=pct([t["predicted_per_token_ms"] / 1e3 for t in tim
                                                  if "predicted_per_token_ms" in t], 50),
                           cached_prompt_tokens=sum(t.get("cache_n", 0) for t in tim),
                           prompt_tokens=[u.get("prompt_tokens") for u in (s.server.get("usage", {}) for s in streams)])
                rows.append(row)
                print(fmt(row), flush=True)
        finally:
            proc.terminate()  # it hangs in shutdown while a stream is still open (after Ctrl-C): then kill
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows


def llama_server_cmd(args: argparse.Namespace, model: Path, port: int, slots: int, ctx: int) -> list[str]:
    """``llama-server`` on loopback with ``slots`` parallel slots sharing ``ctx`` tokens, continuous batching."""
    binary = Path(args.llama_server) if args.llama_server else BUILD_DIR / SERVER_REL
    if not binary.exists():
        if not args.build_llama_server:
            raise SystemExit(f"no llama-server at {binary}; pass --llama-server PATH or --build-llama-server DIR")
        binary = build_llama_server(Path(args.build_llama_server))
    return [str(binary), "-m", str(model), "-np", str(slots), "--cont-batching", "-c", str(ctx),
            "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port), "--no-warmup"]


def per_slot_ctx(tokens: int) -> int:
    return -(-(64 + tokens) // 256) * 256  # prompts are < 64 tokens


def add_common_args(ap: argparse.ArgumentParser, name: str) -> None:
    """The flags both serving benchmarks take."""
    ap.add_argument("--model", help="GGUF file (default: nlm_native's default model, fetched if missing)")
    ap.add_argument("--streams", default="1,4,8,16", help="comma-separated concurrency levels")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per stream (ignore_eos)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both systems")
    ap.add_argument("--json", default=f"bench/results/{name}.json", help="where to write the results")
    ap.add_argument("--skip-llama", action="store_true", help="run only nlm_native")
    ap.add_argument("--skip-ours", action="store_true", help="run only llama-server")
    ap.add_argument("--llama-server", help=f"llama-server binary (default: {BUILD_DIR / SERVER_REL})")
    ap.add_argument("--build-llama-server", metavar="DIR", help="build llama-server from the llama-cpp-python "
                    f"{LLAMA_VERSION} sdist in DIR if no binary is found")


def common_setup(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[int], Path, Path]:
    """The load levels, the model (fetched if needed) and the results file (its folder made)."""
    levels = [int(x) for x in args.streams.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.tokens < 1:
        ap.error("--streams must list positive integers and --tokens must be >= 1")
    if args.model:
        model = Path(args.model)
    else:
        from nlm_native.core.fetch import default_model_path
        model = default_model_path()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    return levels, model, out


# --- report --------------------------------------------------------------------------------------

HEADER = (f"{'system':<13}{'streams':>7}{'tok/s':>9}{'TTFT p50':>10}{'p95':>9}{'ITL p50':>9}{'p95':>9}"
          f"{'host%':>7}  (ms)")


def fmt(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    host = "" if r.get("host_share") is None else f"{100 * r['host_share']:.1f}"
    warn = "" if r["tokens"] == r["expected_tokens"] else f"  !! {r['tokens']}/{r['expected_tokens']} tokens"
    return (f"{r['system']:<13}{r['streams']:>7}{r['tok_s']:>9.1f}{ms(r['ttft_p50_ms']):>10}{ms(r['ttft_p95_ms']):>9}"
            f"{ms(r['itl_p50_ms']):>9}{ms(r['itl_p95_ms']):>9}{host:>7}{warn}")


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], header: str,
            row: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Print both systems' rows by load level, then ours/theirs per level; return those ratios."""
    ratios = []
    for a in ours:
        b = next((r for r in theirs if r["streams"] == a["streams"]), None)
        if b is not None:
            ttft = a["ttft_p50_ms"] / b["ttft_p50_ms"] if a["ttft_p50_ms"] and b["ttft_p50_ms"] else None
            ratios.append({"streams": a["streams"], "tok_s": a["tok_s"] / b["tok_s"], "ttft_p50": ttft})
    mine = ours[0]["system"] if ours else ""
    print(f"\n{header}")
    for r in sorted(ours + theirs, key=lambda r: (r["streams"], r["system"] != mine)):
        print(row(r))
    if ratios:
        print(f"\nours/theirs   streams  tok/s  TTFT p50   (tok/s > 1 and TTFT < 1 favour {mine})")
        for q in ratios:
            ttft = "-" if q["ttft_p50"] is None else f"{q['ttft_p50']:.2f}"
            print(f"{'':<13}{q['streams']:>8}{q['tok_s']:>7.2f}{ttft:>10}")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(ap, "engine")
    ap.add_argument("--n-ctx", type=int, default=4096, help="nlm_native n_ctx (also its KV pool)")
    ap.add_argument("--sampled", action="store_true", help="temperature 0.8, top_p 0.95, seed=i instead of greedy")
    ap.add_argument("--llama-ctx", type=int, default=0, help="llama-server -c (total; default slots*per-slot)")
    ap.add_argument("--prefill-gap", action="store_true", help="also: the largest inter-token gap of 4 decoding "
                    "streams while a --join-tokens prompt joins, chunked (budget 256) and not")
    ap.add_argument("--join-tokens", type=int, default=2000, help="the joining prompt's length (--prefill-gap)")
    args = ap.parse_args()
    levels, model, out = common_setup(ap, args)
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs), threads={args.threads}, model={model.name}, "
          f"tokens={args.tokens}, {'sampled' if args.sampled else 'greedy'}\n{HEADER}", flush=True)
    gaps = [bench_prefill_gap(args, model, b) for b in (256, 4096)] if args.prefill_gap else []
    ours = [] if args.skip_ours else bench_ours(args, model, levels)
    theirs = [] if args.skip_llama else bench_llama(args, model, levels, out.parent)
    ratios = compare(ours, theirs, HEADER, fmt)
    result = {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": args.threads, "model": str(model),
              "tokens": args.tokens, "sampled": args.sampled, "streams": levels, "time": time.strftime("%FT%T%z"),
              "nlm_native": ours, "llama_server": theirs, "ratios": ratios, "prefill_gap": gaps}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
