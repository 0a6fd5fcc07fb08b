"""Prefill and decode speed of nlm_native on a GGUF file.

    python bench/bench_speed.py [MODEL.gguf] [--threads 2] [--prefill 512] [--decode 128] [--reps 3]

Without a path, the default model is fetched (and cached). Prints a table of
median tokens/s over the repetitions and writes it as JSON beside this script
(``bench/speed.json``, or ``--out``).
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

import numpy as np

from nlm_native import Batch, Model


def prefill_seconds(model: Model, tokens: list[int]) -> float:
    seq = model.new_sequence()
    b = Batch()
    b.add_sequence(tokens, 0, seq, logits="last")
    t0 = time.perf_counter()
    model.forward(b)
    dt = time.perf_counter() - t0
    model.free(seq)
    return dt


def decode_seconds(model: Model, prompt: list[int], n: int) -> float:
    """Time n single-token steps after a prompt (the prompt's prefill is not timed)."""
    seq = model.new_sequence()
    b = Batch()
    b.add_sequence(prompt, 0, seq, logits="last")
    token = int(np.argmax(model.forward(b)[-1]))
    t0 = time.perf_counter()
    for i in range(n):
        b = Batch()
        b.add(token, len(prompt) + i, seq, logits=True)
        token = int(np.argmax(model.forward(b)[-1]))
    dt = time.perf_counter() - t0
    model.free(seq)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="GGUF path (default: the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens for the prefill measurement")
    ap.add_argument("--decode", type=int, default=128, help="generated tokens for the decode measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("speed.json")))
    args = ap.parse_args()

    if args.model:
        path = args.model
    else:
        from nlm_native.fetch import fetch

        path = str(fetch())
    model = Model.load(path, n_threads=args.threads, n_ctx=max(2048, args.prefill + args.decode + 8))
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, min(model.n_vocab, 30000), size=args.prefill)]
    short = prompt[:16]

    prefill_seconds(model, prompt[:32])  # warm up: page in the weights
    pre = [args.prefill / prefill_seconds(model, prompt) for _ in range(args.reps)]
    dec = [args.decode / decode_seconds(model, short, args.decode) for _ in range(args.reps)]
    result = {
        "model": os.path.basename(path),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "prefill_tokens": args.prefill,
        "decode_tokens": args.decode,
        "prefill_tok_s": statistics.median(pre),
        "decode_tok_s": statistics.median(dec),
        "prefill_runs": pre,
        "decode_runs": dec,
    }
    head_p, head_d = f"prefill {args.prefill} tok/s", f"decode {args.decode} tok/s"
    print(f"{'engine':12s} {head_p:>20s} {head_d:>20s}")
    print(f"{'nlm_native':12s} {result['prefill_tok_s']:20.1f} {result['decode_tok_s']:20.1f}")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
