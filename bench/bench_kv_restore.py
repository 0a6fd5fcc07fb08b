"""Time to first token for a long prompt: computed cold, against restored from the persistent stores.

    python bench/bench_kv_restore.py [--tokens 2048] [--reps 3] [--codecs f16,int8,int4]
                                     [--json bench/results/kv_restore.json]

For each KV codec: one LLM computes the prompt and writes its blocks through to the stores (SQLite
metadata, payloads in a local directory, or in S3: moto's server on loopback), then closes (flushing).
Then, ``--reps`` times, a fresh LLM sharing those stores (an empty pool, as a restarted process or
another replica) gets the same prompt: the time to its first token is the restore. ``cold`` is a
fresh LLM with no stores; ``memory`` is the same prompt again in a pool that still holds it.
The real model, 2 threads; every request asks for 1 greedy token.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import cpu_model, write_json

from nlm_native import LLM, SamplingParams, cpu_features
from nlm_native.core.fetch import fetch

ONE = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)


@contextlib.contextmanager
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in creds.items():
        os.environ.setdefault(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        yield url
    finally:
        server.stop()


def ttft(llm: LLM, ids: list[int]) -> tuple[float, int]:
    """Seconds to the first token, and the cached tokens the request reported."""
    t = time.perf_counter()
    s = llm.submit(ids, ONE)
    next(iter(s))
    dt = time.perf_counter() - t
    for _ in s:
        pass
    assert s.metrics is not None
    return dt, s.metrics.cached_tokens


def prompt_ids(llm: LLM, n: int) -> list[int]:
    src = (Path(__file__).resolve().parents[1] / "python" / "nlm_native" / "engine" / "engine.py").read_text()
    ids = llm.tokenize(src)
    while len(ids) < n:
        ids += ids
    return ids[:n]


def run(path: str, codec: str, n_tokens: int, reps: int, s3: str, tmp: Path) -> dict[str, Any]:
    kw: dict[str, Any] = {"n_ctx": n_tokens + 64, "n_threads": 2, "kv_codec": codec}
    out: dict[str, Any] = {}
    with LLM(path, prefix_cache=False, **kw) as cold:  # no reuse: every request computes the whole prompt
        ids = prompt_ids(cold, n_tokens)
        ttft(cold, ids[:64])  # warm up the threads and caches
        out["cold_s"] = statistics.median(ttft(cold, ids)[0] for _ in range(reps))
    stores = {"directory": f"file://{tmp / codec / 'blobs'}", "s3": f"s3://bench/{codec}?endpoint_url={s3}"}
    for name, blob in stores.items():
        kv = f"sqlite:///{tmp / codec / (name + '.db')}"
        with LLM(path, kv_store=kv, blob_store=blob, **kw) as writer:
            ttft(writer, ids)
        times, cached = [], 0
        for _ in range(reps):
            with LLM(path, kv_store=kv, blob_store=blob, **kw) as reader:
                ttft(reader, ids[:64])  # warm up (its blocks are stored too: not part of the prompt's)
                dt, cached = ttft(reader, ids)
                times.append(dt)
                if name == "directory":
                    out["memory_s"] = ttft(reader, ids)[0]
        out[f"{name}_s"] = statistics.median(times)
        out[f"{name}_cached_tokens"] = cached
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF path (default: the cached default model)")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--codecs", default="f16,int8,int4")
    ap.add_argument("--json", default="bench/results/kv_restore.json")
    args = ap.parse_args()
    path = args.model or str(fetch())
    result: dict[str, Any] = {"cpu": cpu_model(), "kernels": cpu_features()["kernels"], "tokens": args.tokens,
                              "codecs": {}}
    print(f"CPU: {result['cpu']}; tier {result['kernels']}; a {args.tokens}-token prompt, median of {args.reps}")
    with tempfile.TemporaryDirectory() as d, s3_endpoint() as s3:
        for codec in args.codecs.split(","):
            r = result["codecs"][codec] = run(path, codec, args.tokens, args.reps, s3, Path(d))
            print(f"  {codec}: {r}", flush=True)
    print(f"{'codec':<6}{'cold':>9}{'memory':>9}{'directory':>11}{'x cold':>8}{'S3 (moto)':>11}{'x cold':>8}")
    for codec, r in result["codecs"].items():
        print(f"{codec:<6}{r['cold_s'] * 1e3:>7.0f}ms{r['memory_s'] * 1e3:>7.0f}ms{r['directory_s'] * 1e3:>9.0f}ms"
              f"{r['cold_s'] / r['directory_s']:>7.1f}x{r['s3_s'] * 1e3:>9.0f}ms{r['cold_s'] / r['s3_s']:>7.1f}x")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
