"""nlm_native vs llama.cpp (through llama-cpp-python) on one GGUF, side by side in one run.

    python bench/compare_llamacpp.py [MODEL.gguf] [--threads 2] [--prefill 512] [--decode 128] [--reps 5]
        [--kernels avx2,avx512] [--long-context 4096] [--long-decode 32] [--llamacpp-path DIR]

Measures, for both engines, alternating them in every repetition and reporting medians:
  * prefill of ``--prefill`` tokens (one batch, logits of the last);
  * decode of ``--decode`` tokens (one token per step after a 16-token prompt);
  * decode of ``--long-decode`` tokens after a ``--long-context``-token prompt (the
    prompt is evaluated once per engine; every repetition decodes from its end).
nlm_native is measured once per kernel tier named in ``--kernels`` (default: the tier
the CPU picks), each a row against the same llama.cpp. llama.cpp is measured when
``llama-cpp-python`` is importable; ``--llamacpp-path`` puts a build installed with
``pip install --target DIR`` first on the path, so that a build for the same instruction
set as the tier can be compared (an AVX2-only build against ``--kernels avx2``). Also
measures the machine's read bandwidth and the bytes a decode step must read, which
bound decode speed, and each engine's KV-cache bytes per token.
Writes ``bench/compare_llamacpp.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

from nlm_native import Batch, Model, cpu_features, gguf
from nlm_native._core import kernels


class Ours:
    name = "nlm_native"

    def __init__(self, path: str, threads: int, n_ctx: int, kernels: str | None = None) -> None:
        self.model = Model.load(path, n_threads=threads, n_ctx=n_ctx, kernels=kernels)
        self.name = f"nlm_native {self.model.kernels}"
        self._long: int | None = None
        self._long_len = 0

    def prefill(self, tokens: list[int]) -> float:
        seq = self.model.new_sequence()
        b = Batch()
        b.add_sequence(tokens, 0, seq, logits="last")
        t0 = time.perf_counter()
        self.model.forward(b)
        dt = time.perf_counter() - t0
        self.model.free(seq)
        return dt

    def _steps(self, seq: int, start: int, steps: list[int]) -> float:
        t0 = time.perf_counter()
        for i, t in enumerate(steps):
            b = Batch()
            b.add(t, start + i, seq, logits=True)
            self.model.forward(b)
        return time.perf_counter() - t0

    def decode(self, prompt: list[int], steps: list[int]) -> float:
        seq = self.model.new_sequence()
        b = Batch()
        b.add_sequence(prompt, 0, seq, logits="last")
        self.model.forward(b)
        dt = self._steps(seq, len(prompt), steps)
        self.model.free(seq)
        return dt

    def set_long_context(self, prompt: list[int]) -> None:
        """Evaluate ``prompt`` once, in chunks; ``decode_long`` continues from its end."""
        self._long = self.model.new_sequence()
        for i in range(0, len(prompt), 512):
            b = Batch()
            b.add_sequence(prompt[i:i + 512], i, self._long, logits="last")
            self.model.forward(b)
        self._long_len = len(prompt)

    def decode_long(self, steps: list[int]) -> float:
        assert self._long is not None
        dt = self._steps(self._long, self._long_len, steps)
        self.model.truncate(self._long, self._long_len)
        return dt

    def kv_bytes_per_token(self) -> float:
        return float(self.model.memory()["kv_bytes_per_token"])


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
        self._long_len = 0
        self._kv_per_token = float("nan")

    def prefill(self, tokens: list[int]) -> float:
        self.llm.reset()  # eval() drops the KV entries past n_tokens, so this starts afresh
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        return time.perf_counter() - t0

    def _steps(self, steps: list[int]) -> float:
        t0 = time.perf_counter()
        for t in steps:
            self.llm.eval([t])
        return time.perf_counter() - t0

    def decode(self, prompt: list[int], steps: list[int]) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        return self._steps(steps)

    def set_long_context(self, prompt: list[int]) -> None:
        import llama_cpp.llama_cpp as lib

        self.llm.reset()
        self.llm.eval(prompt)
        self._long_len = len(prompt)
        # the serialized state of the sequence: its KV cells (and a few bytes of bookkeeping each)
        self._kv_per_token = lib.llama_state_seq_get_size(self.llm.ctx, 0) / len(prompt)

    def decode_long(self, steps: list[int]) -> float:
        self.llm.n_tokens = self._long_len  # the next eval() drops what the last repetition added
        return self._steps(steps)

    def kv_bytes_per_token(self) -> float:
        return self._kv_per_token


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
    return n / statistics.median(runs) if runs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kernels", default="",
                    help="comma-separated nlm_native tiers, one row each (default: the active one)")
    ap.add_argument("--long-context", type=int, default=4096,
                    help="prompt tokens before the long-context decode (0: skip)")
    ap.add_argument("--long-decode", type=int, default=32, help="tokens decoded after the long prompt")
    ap.add_argument("--no-llamacpp", action="store_true", help="measure nlm_native only")
    ap.add_argument("--llamacpp-path", default="", help="a directory holding a llama_cpp build, put first on sys.path")
    ap.add_argument("--llamacpp-no-extra-bufts", action="store_true",
                    help="load llama.cpp with use_extra_bufts=False (no AMX / repacked weight buffers)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("compare_llamacpp.json")))
    args = ap.parse_args()
    if args.model:
        path = args.model
    else:
        from nlm_native.core.fetch import fetch

        path = str(fetch())
    if args.llamacpp_path:
        sys.path.insert(0, args.llamacpp_path)

    n_ctx = max(args.prefill + args.decode, args.long_context + args.long_decode) + 64
    tiers = [t for t in args.kernels.split(",") if t] or [None]
    engines: list[Any] = [Ours(path, args.threads, n_ctx, t) for t in tiers]
    if not args.no_llamacpp:
        try:
            engines.append(LlamaCpp(path, args.threads, n_ctx, n_batch=args.prefill,
                                    extra_bufts=not args.llamacpp_no_extra_bufts))
        except ImportError:
            print("llama-cpp-python not importable: measuring nlm_native only", file=sys.stderr)
    llama = engines[-1] if isinstance(engines[-1], LlamaCpp) else None

    rng = np.random.default_rng(0)
    n_vocab = engines[0].model.n_vocab
    prompt = [int(t) for t in rng.integers(100, min(n_vocab, 30000), size=args.prefill)]
    steps = [int(t) for t in rng.integers(100, min(n_vocab, 30000), size=args.decode)]
    long_prompt = [int(t) for t in rng.integers(100, min(n_vocab, 30000), size=args.long_context)]
    long_steps = steps[:args.long_decode]
    short = prompt[:16]

    for e in engines:  # warm up: weights paged in, threads started
        e.prefill(prompt[:64])
        e.decode(short, steps[:4])
    runs: dict[str, dict[str, list[float]]] = {
        e.name: {"prefill": [], "decode": [], "decode_long": []} for e in engines}
    for _ in range(args.reps):  # alternate the engines inside every repetition
        for e in engines:
            runs[e.name]["prefill"].append(e.prefill(prompt))
        for e in engines:
            runs[e.name]["decode"].append(e.decode(short, steps))
    if args.long_context > 0:
        for e in engines:  # each engine's long prompt is evaluated once, then decoded from repeatedly
            e.set_long_context(long_prompt)
            for _ in range(args.reps):
                runs[e.name]["decode_long"].append(e.decode_long(long_steps))

    bw = kernels.read_bandwidth_gbps(1 << 30, args.threads, 5)
    step_bytes = decode_bytes(path)
    ceiling = bw * 1e9 / step_bytes
    results: dict[str, Any] = {
        "model": os.path.basename(path),
        "threads": args.threads,
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "read_bandwidth_gbps": bw,
        "decode_step_bytes": step_bytes,
        "decode_ceiling_tok_s": ceiling,
        "long_context": args.long_context,
        "llamacpp_path": args.llamacpp_path,
        "llamacpp_extra_bufts": not args.llamacpp_no_extra_bufts,
        "engines": {},
    }
    print(f"{results['cpu']}; read bandwidth {bw:.1f} GB/s with {args.threads} threads; a decode step reads "
          f"{step_bytes / 1e6:.0f} MB -> ceiling {ceiling:.1f} tokens/s")
    cols = [f"prefill {args.prefill}", f"decode {args.decode}", f"decode@{args.long_context}", "dec/ceiling",
            "KV B/tok"]
    print(f"{'engine':20s}" + "".join(f"{c:>16s}" for c in cols))
    for e in engines:
        r = runs[e.name]
        row = {
            "prefill_tok_s": median_rate(r["prefill"], args.prefill),
            "decode_tok_s": median_rate(r["decode"], args.decode),
            "decode_long_tok_s": median_rate(r["decode_long"], len(long_steps)),
            "kv_bytes_per_token": e.kv_bytes_per_token() if args.long_context > 0 or not isinstance(e, LlamaCpp)
            else float("nan"),
            "runs_s": r,
        }
        row["decode_vs_ceiling"] = row["decode_tok_s"] / ceiling
        results["engines"][e.name] = row
        vals = [row["prefill_tok_s"], row["decode_tok_s"], row["decode_long_tok_s"]]
        print(f"{e.name:20s}" + "".join(f"{v:16.1f}" for v in vals) + f"{row['decode_vs_ceiling']:16.0%}"
              + f"{row['kv_bytes_per_token']:16.0f}")
    if llama is not None:
        theirs = results["engines"][llama.name]
        results["ratios"] = {}
        for e in engines[:-1]:
            ours = results["engines"][e.name]
            ratio = {k: ours[k] / theirs[k] for k in ("prefill_tok_s", "decode_tok_s", "decode_long_tok_s")}
            results["ratios"][e.name] = ratio
            print(f"{'ratio ' + e.name.split()[-1]:20s}" + "".join(f"{v:15.2f}x" for v in ratio.values()))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
