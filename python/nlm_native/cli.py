"""``nlm``: the command line.

``nlm pull`` fetches the default model; ``nlm info PATH`` prints a GGUF's summary;
``nlm demo`` (the README's main job until text generation lands) fetches the
default model, prints its summary and the greedy continuation, as token ids, of a
code prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .fetch import DEFAULT_MODEL, fetch

# Token ids of the first prompt of llama.cpp's recorded fixture for the default model
# ("def quicksort(arr):\n    \"\"\"Sort a list using quicksort.\"\"\"\n"), so the demo
# runs before the tokenizer exists.
DEMO_PROMPT_IDS = [750, 3974, 6860, 10939, 982, 262, 4210, 10231, 264, 1140, 1667, 3974, 6860, 14442]


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self) -> None:
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            if self.stage:
                sys.stderr.write("\n")
            self.stage = stage
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        unit = f"{done}/{total} parts" if stage == "download" else f"{done >> 20}/{total >> 20} MiB"
        sys.stderr.write(f"\r{stage:8s} [{bar:30s}] {frac:6.1%} {unit}")
        if done >= total:
            sys.stderr.write("\n")
            self.stage = ""
        sys.stderr.flush()


def _pull(args: argparse.Namespace) -> int:
    path = fetch(DEFAULT_MODEL, progress=_Bar(), force=args.force)
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .model import Model

    model = Model.load(args.path, n_ctx=32)
    print(json.dumps(model.summary(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .greedy import greedy_tokens
    from .model import Model

    path = args.model or str(fetch(DEFAULT_MODEL, progress=_Bar()))
    model = Model.load(path, n_threads=args.threads, n_ctx=2048)
    print(json.dumps(model.summary(), indent=2))
    prompt = [int(t) for t in args.ids.split(",")] if args.ids else DEMO_PROMPT_IDS
    t0 = time.perf_counter()
    out = list(greedy_tokens(model, prompt, args.max_tokens))
    dt = time.perf_counter() - t0
    print("prompt ids:", prompt)
    print("greedy ids:", out)
    if "tokenizer.ggml.model" in model.metadata:
        from .tokenizer import Tokenizer

        tok = Tokenizer(model.metadata)
        print("prompt text:", repr(tok.decode(prompt)))
        print("greedy text:", repr(tok.decode(out)))
    print(f"{len(out)} tokens in {dt:.2f} s ({len(out) / dt:.1f} tokens/s including prefill)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nlm", description="nlm_native command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="fetch the default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) into the cache")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_pull)
    p = sub.add_parser("info", help="print a GGUF model's summary")
    p.add_argument("path")
    p.set_defaults(func=_info)
    p = sub.add_parser("demo", help="summary and greedy continuation (token ids) with the default model")
    p.add_argument("--model", help="GGUF path (default: the cached default model, fetched if needed)")
    p.add_argument("--ids", help="comma-separated prompt token ids (default: a code prompt)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"nlm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
