"""``nlm``: the command line.

* ``nlm pull`` fetches the default model (progress bar, sha256 check, user cache);
* ``nlm generate "prompt"`` streams a completion (through the chat template when the
  model has one, unless ``--raw``);
* ``nlm chat`` is an interactive, streaming chat (``/reset`` clears the history,
  ``/exit`` or end of input leaves);
* ``nlm info PATH`` prints a GGUF's summary; ``nlm demo`` prints the summary and a
  greedy continuation as ids and text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .core.fetch import DEFAULT_MODEL, fetch
from .core.model import KV_CODECS

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
    from .core import Model

    model = Model.load(args.path, n_ctx=32)
    print(json.dumps(model.summary(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .core import Model
    from .engine.greedy import greedy_tokens

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
        from .text import Tokenizer

        tok = Tokenizer(model.metadata)
        print("prompt text:", repr(tok.decode(prompt)))
        print("greedy text:", repr(tok.decode(out)))
    print(f"{len(out)} tokens in {dt:.2f} s ({len(out) / dt:.1f} tokens/s including prefill)", file=sys.stderr)
    return 0


def _load_llm(args: argparse.Namespace) -> Any:
    from .llm import LLM

    path = args.model or str(fetch(DEFAULT_MODEL, progress=_Bar()))
    return LLM(path, n_threads=args.threads, n_ctx=args.ctx, kv_codec=args.kv_codec)


def _params(args: argparse.Namespace) -> Any:
    from .sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
                          stop=tuple(args.stop or ()))


def _write_stream(chunks: Iterator[Any]) -> tuple[str, str | None, int]:
    text, reason, n = "", None, 0
    for c in chunks:
        sys.stdout.write(c.text)
        sys.stdout.flush()
        text += c.text
        n += len(c.token_ids)
        reason = c.finish_reason or reason
    return text, reason, n


def _generate(args: argparse.Namespace) -> int:
    llm = _load_llm(args)
    params = _params(args)
    if args.raw or llm.chat_template is None:
        prompt = args.prompt
    else:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        prompt = llm.apply_chat_template(msgs)
    t0 = time.perf_counter()
    _, reason, n = _write_stream(llm.stream(prompt, params))
    dt = time.perf_counter() - t0
    sys.stdout.write("\n")
    print(f"[{n} tokens in {dt:.2f} s, {n / dt:.1f} tokens/s including prefill; finish_reason={reason}]",
          file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    llm = _load_llm(args)
    params = _params(args)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("nlm chat: /reset clears the history, /exit (or Ctrl-D) leaves", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            del history[int(bool(args.system)):]
            continue
        history.append({"role": "user", "content": line})
        text, _, _ = _write_stream(llm.stream(llm.apply_chat_template(history), params))
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": text})
    return 0


def _sampling_args(p: argparse.ArgumentParser, *, max_tokens: int | None) -> None:
    p.add_argument("--model", help="GGUF path (default: the cached default model, fetched if needed)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    p.add_argument("--kv-codec", choices=KV_CODECS, default="f16",
                   help="how the KV cache stores keys and values (int8 / int4: about 1/2 and 1/3 of f16's bytes)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.05)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="GGUF path (default: $NLM_MODEL, else the default model, fetched if needed)")
    p.add_argument("--model-name", help="the model id clients use (default: the file's general.name)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--ctx", type=int, help="context size in tokens (default 4096)")
    p.add_argument("--kv-codec", choices=KV_CODECS)
    p.add_argument("--kv-store", help="SQL URL for KV block metadata (sqlite:///kv.db, postgresql://..., hana+hdbcli://...)")
    p.add_argument("--blob-store", help="file:///dir or s3://bucket/prefix?endpoint_url=...")
    p.add_argument("--api-key", action="append", default=[],
                   help="an accepted API key (repeatable); options may follow it: "
                   "'KEY max_priority=low requests_per_minute=N tokens_per_minute=N'")
    p.add_argument("--api-keys-file", help="a file of API keys, one per line (with options, as --api-key)")
    p.add_argument("--basic-users-file", help="HTTP Basic users: lines user:salt_hex:pbkdf2_sha256_hex")
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--requests-per-minute", type=float, help="per API key")
    p.add_argument("--tokens-per-minute", type=float, help="per API key (prompt estimate + max_tokens)")
    p.add_argument("--max-priority", choices=("low", "normal", "high"))
    p.add_argument("--request-timeout", type=float, help="seconds: every request's timeout (one may ask for less)")
    p.add_argument("--max-waiting", type=int, help="queued requests before a 503 (default 1024)")
    p.add_argument("--max-seqs", type=int, help="sequences decoding at once (default 64)")
    p.add_argument("--drain-seconds", type=float, help="at shutdown, how long running streams may finish (30)")
    p.add_argument("--cors-origin", action="append", default=[], help="an allowed CORS origin (repeatable)")
    p.add_argument("--metrics-store", help="SQL URL for INFERENCE_METRICS rows (default: SQLite in the cache; off)")


def _serve(args: argparse.Namespace) -> int:
    from .server import ServerConfig, serve
    from .server.config import read_keys

    c = ServerConfig.from_env()
    for flag, attr in (("model", "model"), ("model_name", "model_name"), ("host", "host"), ("port", "port"),
                       ("threads", "threads"), ("ctx", "ctx"), ("kv_codec", "kv_codec"), ("kv_store", "kv_store"),
                       ("blob_store", "blob_store"), ("basic_users_file", "basic_users_file"),
                       ("max_body_bytes", "max_body_bytes"), ("requests_per_minute", "requests_per_minute"),
                       ("tokens_per_minute", "tokens_per_minute"), ("max_priority", "max_priority"),
                       ("request_timeout", "request_timeout"), ("metrics_store", "metrics_store"),
                       ("max_waiting", "max_waiting"), ("max_seqs", "max_seqs"), ("drain_seconds", "drain_seconds")):
        v = getattr(args, flag)
        if v is not None:
            setattr(c, attr, v)
    c.api_keys += args.api_key + (read_keys(args.api_keys_file) if args.api_keys_file else [])
    c.cors_origins += args.cors_origin
    serve(c.check())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nlm", description="nlm_native command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="fetch the default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) into the cache")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_pull)
    p = sub.add_parser("generate", help="stream a completion of PROMPT (chat template applied unless --raw)")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="complete the prompt text as is, without the chat template")
    _sampling_args(p, max_tokens=512)
    p.set_defaults(func=_generate)
    p = sub.add_parser("chat", help="interactive streaming chat with the default model")
    _sampling_args(p, max_tokens=None)
    p.set_defaults(func=_chat)
    p = sub.add_parser("info", help="print a GGUF model's summary")
    p.add_argument("path")
    p.set_defaults(func=_info)
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (flags override NLM_* variables)")
    _serve_args(p)
    p.set_defaults(func=_serve)
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
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
