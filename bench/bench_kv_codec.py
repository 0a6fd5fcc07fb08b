"""The KV codecs: quality on the real model, and the kernels' throughput next to memory bandwidth.

    python bench/bench_kv_codec.py [--windows 11] [--reps 5] [--json bench/results/kv_codec.json]
    python bench/bench_kv_codec.py --no-quality     # kernels only

Quality: perplexity on llama.cpp's oracle text (512-token windows, positions ctx/2 .. ctx-2, as
tests/test_real_model.py scores them) with the KV pool in f16, int8 and int4; the mean KL divergence
of each codec's next-token distributions from f16's, top-1 agreement, bytes per token, and the time
of the windows' prefill.

Throughput: encode and decode of 4,096 blocks (32 tokens x 64 channels, the real model's head) per
tier, one thread, in GB/s of float32 rows (what attention reads after decoding), beside CRC32C of the
encoded bytes and the machine's one-thread read bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model, write_json

import nlm_native
from nlm_native import Batch, Model, cpu_features
from nlm_native._core import kernels
from nlm_native.core import kvcodec

SHARED = Path(os.environ.get("NLM_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
ORACLE = SHARED / "fixtures" / "oracle" / "qwen2.5-coder-0.5b-q4km.llamacpp.json"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def quality(path: str, n_windows: int | None) -> dict[str, Any]:
    ppl = json.loads(ORACLE.read_text())["perplexity"]
    ctx, ids = ppl["ctx"], ppl["token_ids"]
    windows = [ids[w * ctx:(w + 1) * ctx] for w in range(len(ids) // ctx)][:n_windows]
    base: list[np.ndarray] = []
    out: dict[str, Any] = {"windows": len(windows), "ctx": ctx, "llamacpp_f16_ppl": ppl["ppl"]}
    for codec in ("f16", "int8", "int4"):
        model = Model.load(path, n_threads=2, n_ctx=ctx, kv_codec=codec)
        nll, count, kl, top1, secs = 0.0, 0, [], [], 0.0
        for w, window in enumerate(windows):
            seq = model.new_sequence()
            b = Batch()
            for i, t in enumerate(window):
                b.add(t, i, seq, logits=ctx // 2 <= i <= ctx - 2)
            t0 = time.perf_counter()
            logits = model.forward(b)
            secs += time.perf_counter() - t0
            model.free(seq)
            lp = log_softmax(logits)
            targets = np.asarray(window[ctx // 2 + 1:])
            nll -= float(lp[np.arange(len(targets)), targets].sum())
            count += len(targets)
            if codec == "f16":
                base.append(lp.astype(np.float32))
            else:
                ref = base[w].astype(np.float64)
                kl.append(float((np.exp(ref) * (ref - lp)).sum(-1).mean()))
                top1.append(float((ref.argmax(-1) == lp.argmax(-1)).mean()))
        row = {"ppl": math.exp(nll / count), "bytes_per_token": model.memory()["kv_bytes_per_token"],
               "prefill_tok_s": len(windows) * ctx / secs}
        if codec != "f16":
            row |= {"kl": statistics.mean(kl), "top1": statistics.mean(top1),
                    "ppl_rise": row["ppl"] / out["f16"]["ppl"] - 1}
        out[codec] = row
        print(f"  {codec}: {row}", flush=True)
    return out


def timed(fn: Any, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def throughput(reps: int) -> dict[str, Any]:
    n_blocks, rows, d = 4096, 32, 64
    x = np.random.default_rng(0).standard_normal((n_blocks, rows, d)).astype(np.float32)
    x[:, :, 7] *= 20  # an outlier channel
    tiers = ["generic"] + [t for t in cpu_features()["kernel_tiers"] if t not in ("generic", "amx", "avxvnni")]
    out: dict[str, Any] = {"blocks": n_blocks, "rows": rows, "head_dim": d, "float_bytes": x.nbytes, "tiers": {}}
    for tier in tiers:
        res: dict[str, Any] = {}
        for codec in kvcodec.CODECS:
            for part in "kv":
                # into buffers allocated (and touched) once: the kernels' speed, not page faults
                data = np.frombuffer(bytearray(kvcodec.encode(x, codec, part, tier)), dtype=np.uint8)
                back = np.zeros_like(x)
                enc = timed(lambda: kvcodec.encode_into(data, x, codec, part, tier), reps)  # noqa: B023
                dec = timed(lambda: kvcodec.decode(data, n_blocks, rows, d, codec, part, tier, back), reps)  # noqa: B023
                res[f"{codec}_{part}"] = {"encode_gb_s": x.nbytes / enc / 1e9, "decode_gb_s": x.nbytes / dec / 1e9,
                                          "encoded_bytes": len(data)}
        out["tiers"][tier] = res
    data = kvcodec.encode(x, "int8", "k")
    out["crc32c_gb_s"] = len(data) / timed(lambda: nlm_native.crc32c(data), reps) / 1e9
    out["read_bandwidth_1t_gb_s"] = kernels.read_bandwidth_gbps(1 << 28, 1, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF path (default: the cached default model)")
    ap.add_argument("--windows", type=int, default=None, help="perplexity windows (default: all)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--json", default="bench/results/kv_codec.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"cpu": cpu_model(), "kernels": cpu_features()["kernels"]}
    print(f"CPU: {result['cpu']}; active tier {result['kernels']}")
    if not args.no_quality:
        from nlm_native.core.fetch import fetch

        print("quality (real model):")
        q = result["quality"] = quality(args.model or str(fetch()), args.windows)
        print(f"{'codec':<6}{'ppl':>9}{'vs f16':>9}{'KL':>9}{'top-1':>8}{'B/token':>9}{'prefill tok/s':>15}")
        for codec in ("f16", "int8", "int4"):
            r = q[codec]
            rise = f"{r['ppl_rise']:+.3%}" if "ppl_rise" in r else ""
            kl = f"{r['kl']:.5f}" if "kl" in r else ""
            top1 = f"{r['top1']:.4f}" if "top1" in r else ""
            print(f"{codec:<6}{r['ppl']:>9.4f}{rise:>9}{kl:>9}{top1:>8}{r['bytes_per_token']:>9}"
                  f"{r['prefill_tok_s']:>15.1f}")
    t = result["throughput"] = throughput(args.reps)
    print(f"codec kernels, one thread, GB/s of float32 rows ({t['blocks']} blocks of {t['rows']} x {t['head_dim']});"
          f" read bandwidth {t['read_bandwidth_1t_gb_s']:.1f} GB/s; CRC32C {t['crc32c_gb_s']:.1f} GB/s")
    print(f"{'tier':<9}{'codec':<8}{'encode':>8}{'decode':>8}")
    for tier, res in t["tiers"].items():
        for name, r in res.items():
            print(f"{tier:<9}{name:<8}{r['encode_gb_s']:>8.2f}{r['decode_gb_s']:>8.2f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
