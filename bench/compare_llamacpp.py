"""nlm_native vs llama.cpp (through llama-cpp-python) on one GGUF, side by side in one run.

    python bench/compare_llamacpp.py [MODEL.gguf] [--threads 2] [--prefill 512] [--decode 128] [--reps 5]

Measures prefill of ``--prefill`` tokens (one batch, logits of the last) and decode
of ``--decode`` tokens (one token per step after a 16-token prompt) for both
engines, alternating them in every repetition, and reports medians. llama.cpp is
measured when ``llama-cpp-python`` is installed (``pip install
llama-cpp-python==0.3.36`` builds it from source). Also measures the machine's
read bandwidth and the bytes a decode step must read, which bound decode speed.
Writes ``bench/compare_llamacpp.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nlm_native import Batch, Model, cpu_features, gguf
from nlm_native._core import kernels


class Ours:
    name = "nlm_native"

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        self.model = Model.load(path, n_threads=threads, n_ctx=n_ctx)

    def prefill(self, tokens: list[int]) -> float:
        seq = self.model.new_sequence()
        b = Batch()
        b.add_sequence(tokens, 0, seq, logits="last")
        t0 = time.perf_counter()
        self.model.forward(b)
        dt = time.perf_counter() - t0
        self.model.free(seq)
        return dt

    def decode(self, prompt: list[int], steps: list[int]) -> float:
        seq = self.model.new_sequence()
        b = Batch()
        b.add_sequence(prompt, 0, seq, logits="last")
        self.model.forward(b)
        t0 = time.perf_counter()
        for i, t in enumerate(steps):
            b = Batch()
            b.add(t, len(prompt) + i, seq, logits=True)
            self.model.forward(b)
        dt = time.perf_counter() - t0
        self.model.free(seq)
        return dt


def load_llamacpp(path: str, threads: int, n_ctx: int, n_batch: int, extra_bufts: bool) -> Any:
    """llama_cpp.Llama on ``path``, optionally without llama.cpp's extra weight buffers."""
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    if not extra_bufts:
        # llama.cpp's "extra" weight buffers (AMX / repacked layouts) off, through the
        # model parameters Llama() starts from: its AMX path crashes on some machines.
        default = lib.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
    return Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                 n_batch=n_batch, n_ubatch=n_batch, verbose=False)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int, extra_bufts: bool) -> None:
        self.llm = load_llamacpp(path, threads, n_ctx, n_batch, extra_bufts)

    def prefill(self, tokens: list[int]) -> float:
        self.llm.reset()  # eval() drops the KV entries past n_tokens, so this starts afresh
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        return time.perf_counter() - t0

    def decode(self, prompt: list[int], steps: list[int]) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        t0 = time.perf_counter()
        for t in steps:
            self.llm.eval([t])
        return time.perf_counter() - t0


def decode_bytes(path: str) -> int:
    """Weight bytes one decode step reads: every tensor except the embedding table (one row of it)."""
    g = gguf.read(path)
    names = {t.name for t in g.tensors}
    total = 0
    for t in g.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            total += t.n_bytes // t.shape[1]
        else:
            total += t.n_bytes
    return total


def median_rate(runs: list[float], n: int) -> float:
    return n / statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-llamacpp", action="store_true", help="measure nlm_native only")
    ap.add_argument("--llamacpp-no-extra-bufts", action="store_true",
                    help="load llama.cpp with use_extra_bufts=False (no AMX / repacked weight buffers)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("compare_llamacpp.json")))
    args = ap.parse_args()
    if args.model:
        path = args.model
    else:
        from nlm_native.fetch import fetch

        path = str(fetch())

    n_ctx = args.prefill + args.decode + 64
    engines: list[Any] = [Ours(path, args.threads, n_ctx)]
    if not args.no_llamacpp:
        try:
            engines.append(LlamaCpp(path, args.threads, n_ctx, n_batch=args.prefill,
                                    extra_bufts=not args.llamacpp_no_extra_bufts))
        except ImportError:
            print("llama-cpp-python not installed: measuring nlm_native only", file=sys.stderr)

    rng = np.random.default_rng(0)
    n_vocab = engines[0].model.n_vocab
    prompt = [int(t) for t in rng.integers(100, min(n_vocab, 30000), size=args.prefill)]
    steps = [int(t) for t in rng.integers(100, min(n_vocab, 30000), size=args.decode)]
    short = prompt[:16]

    for e in engines:  # warm up: weights paged in, threads started
        e.prefill(prompt[:64])
        e.decode(short, steps[:4])
    runs: dict[str, dict[str, list[float]]] = {e.name: {"prefill": [], "decode": []} for e in engines}
    for _ in range(args.reps):  # alternate the engines inside every repetition
        for e in engines:
            runs[e.name]["prefill"].append(e.prefill(prompt))
        for e in engines:
            runs[e.name]["decode"].append(e.decode(short, steps))

    bw = kernels.read_bandwidth_gbps(1 << 30, args.threads, 5)
    step_bytes = decode_bytes(path)
    ceiling = bw * 1e9 / step_bytes
    results: dict[str, Any] = {
        "model": os.path.basename(path),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "cpu_features": cpu_features(),
        "read_bandwidth_gbps": bw,
        "decode_step_bytes": step_bytes,
        "decode_ceiling_tok_s": ceiling,
        "llamacpp_extra_bufts": not args.llamacpp_no_extra_bufts,
        "engines": {},
    }
    print(f"read bandwidth {bw:.1f} GB/s with {args.threads} threads; a decode step reads {step_bytes / 1e6:.0f} MB "
          f"-> ceiling {ceiling:.1f} tokens/s")
    head_p, head_d = f"prefill {args.prefill} tok/s", f"decode {args.decode} tok/s"
    print(f"{'engine':12s} {head_p:>20s} {head_d:>20s} {'decode / ceiling':>18s}")
    for e in engines:
        p = median_rate(runs[e.name]["prefill"], args.prefill)
        d = median_rate(runs[e.name]["decode"], args.decode)
        results["engines"][e.name] = {"prefill_tok_s": p, "decode_tok_s": d, "runs_s": runs[e.name]}
        print(f"{e.name:12s} {p:20.1f} {d:20.1f} {d / ceiling:17.0%}")
    if len(engines) == 2:
        ours, theirs = results["engines"]["nlm_native"], results["engines"]["llama.cpp"]
        rp = ours["prefill_tok_s"] / theirs["prefill_tok_s"]
        rd = ours["decode_tok_s"] / theirs["decode_tok_s"]
        results["ratio_prefill"], results["ratio_decode"] = rp, rd
        print(f"{'ratio':12s} {rp:19.2f}x {rd:19.2f}x")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
