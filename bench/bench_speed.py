"""Prefill and decode speed of nlm_native on a GGUF file.

    python bench/bench_speed.py [MODEL.gguf] [--threads 2] [--prefill 512] [--decode 128] [--reps 3]

Without a path, the default model is fetched (and cached). Prints median tokens/s
over the repetitions and writes them as JSON beside this script (``bench/speed.json``,
or ``--out``). ``compare_llamacpp.py`` measures the same side by side with llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from compare_llamacpp import Ours  # the same measurement code as the comparison


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
        from nlm_native.core.fetch import fetch

        path = str(fetch())
    engine = Ours(path, args.threads, args.prefill + args.decode + 64)
    rng = np.random.default_rng(0)
    top = min(engine.model.n_vocab, 30000)
    prompt = [int(t) for t in rng.integers(min(100, top - 1), top, size=args.prefill)]
    steps = [int(t) for t in rng.integers(min(100, top - 1), top, size=args.decode)]
    engine.prefill(prompt[:32])  # warm up: page in the weights
    pre = [args.prefill / engine.prefill(prompt) for _ in range(args.reps)]
    dec = [args.decode / engine.decode(prompt[:16], steps) for _ in range(args.reps)]
    result = {
        "model": os.path.basename(path),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "kernels": engine.model.kernels,
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
