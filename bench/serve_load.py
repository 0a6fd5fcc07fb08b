"""HTTP serving benchmark: ``nlm serve`` vs llama.cpp's ``llama-server -np 16``, streamed over loopback.

    python bench/serve_load.py [--model M.gguf] [--streams 1,4,8,16] [--tokens 128] [--threads 2]
        [--json bench/results/serve_load.json] [--skip-llama | --skip-ours] [--llama-server PATH]
        [--build-llama-server DIR]

Both servers run as their own processes (ours: ``python -m nlm_native serve``; theirs: ``llama-server
-np 16 --cont-batching -c 16*per-slot -t threads``), started here on loopback, one after the other,
each stopped before the next starts. For every load level S, S clients start together (a barrier),
each on its own thread with its own connection, each sending one streamed ``POST /v1/completions``:
a distinct short coding prompt (tagged with the level and client, so no prompt repeats across levels
and neither server's prompt cache helps), ``max_tokens`` tokens, greedy, ``ignore_eos``,
``stream_options.include_usage``. Measured from client-side ``time.perf_counter`` stamps:

* aggregate tok/s: the completion tokens the servers report in ``usage`` / (last event - first submit);
* TTFT p50/p95/p99: first event carrying text - submit, over the S clients;
* ITL p50/p95: gaps between a client's consecutive text events.

A level fails loudly if any stream ends with fewer tokens than asked. Each server gets one warm-up
request first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_engine import (
    PROMPTS,
    Stream,
    add_common_args,
    common_setup,
    compare,
    free_port,
    llama_server_cmd,
    pct,
    per_slot_ctx,
    run_load,
    sse_events,
    wait_health,
)
from machine import cpu_model


def prompt(level: int, i: int) -> str:
    return f"# task {level}.{i}\n{PROMPTS[i % len(PROMPTS)]}"


def stream_completion(port: int, body: dict[str, Any], st: Stream) -> None:
    """One streamed completion; ``st.times``: arrival of every event with text; ``st.server['usage']``."""
    for now, ev in sse_events(port, body, st):
        if any(c.get("text") for c in ev.get("choices") or []):
            st.times.append(now)
        if ev.get("usage"):
            st.server["usage"] = ev["usage"]


def measure(name: str, port: int, levels: list[int], tokens: int) -> list[dict[str, Any]]:
    def worker(level: int, n_tokens: int) -> Any:
        def work(i: int, st: Stream) -> None:
            body = {"prompt": prompt(level, i), "max_tokens": n_tokens, "temperature": 0.0, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            stream_completion(port, body, st)
        return work

    run_load(1, worker(0, 16))  # warm-up
    rows = []
    for n in levels:
        streams, _ = run_load(n, worker(n, tokens))
        got = [int(s.server.get("usage", {}).get("completion_tokens", 0)) for s in streams]
        if min(got) < tokens:
            raise RuntimeError(f"{name}: a stream of {n} ended with {min(got)} of {tokens} tokens")
        wall = max(s.times[-1] for s in streams) - min(s.submit for s in streams)
        ttft = [s.times[0] - s.submit for s in streams]
        itl = [b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False)]
        row = {"system": name, "streams": n, "tokens": sum(got), "wall_s": wall, "tok_s": sum(got) / wall,
               "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95), "ttft_p99_ms": pct(ttft, 99),
               "itl_p50_ms": pct(itl, 50), "itl_p95_ms": pct(itl, 95),
               "prompt_tokens": [s.server["usage"].get("prompt_tokens") for s in streams]}
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def serve(name: str, cmd: list[str], port: int, log: Path, levels: list[int], tokens: int) -> list[dict[str, Any]]:
    print("$ " + " ".join(cmd), flush=True)
    with log.open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_health(proc, port, log, timeout=300, name=name)
            return measure(name, port, levels, tokens)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ours_cmd(args: argparse.Namespace, model: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "nlm_native", "serve", "--model", str(model), "--threads", str(args.threads),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-store", "off"]


HEADER = (f"{'system':<13}{'streams':>7}{'tok/s':>9}{'TTFT p50':>10}{'p95':>9}{'p99':>9}{'ITL p50':>9}{'p95':>9}"
          "  (ms)")


def fmt(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return (f"{r['system']:<13}{r['streams']:>7}{r['tok_s']:>9.1f}{ms(r['ttft_p50_ms']):>10}{ms(r['ttft_p95_ms']):>9}"
            f"{ms(r['ttft_p99_ms']):>9}{ms(r['itl_p50_ms']):>9}{ms(r['itl_p95_ms']):>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(ap, "serve_load")
    args = ap.parse_args()
    levels, model, out = common_setup(ap, args)
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs), threads={args.threads}, model={model.name}, "
          f"{args.tokens} greedy tokens per stream, kernels={os.environ.get('NLM_KERNELS', 'auto')}\n{HEADER}",
          flush=True)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    if not args.skip_ours:
        port = free_port()
        ours = serve("nlm serve", ours_cmd(args, model, port), port, out.parent / "nlm-serve.log", levels,
                     args.tokens)
    if not args.skip_llama:
        port = free_port()
        slots = max(16, max(levels))
        cmd = llama_server_cmd(args, model, port, slots, slots * per_slot_ctx(args.tokens))
        theirs = serve("llama-server", cmd, port, out.parent / "llama-server.log", levels, args.tokens)
    ratios = compare(ours, theirs, HEADER, fmt)
    result = {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": args.threads, "model": str(model),
              "kernels": os.environ.get("NLM_KERNELS", "auto"), "tokens": args.tokens, "streams": levels,
              "time": time.strftime("%FT%T%z"), "nlm_serve": ours, "llama_server": theirs, "ratios": ratios}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
