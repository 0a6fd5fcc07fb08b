"""CRC32C throughput on one 64 MiB buffer: nlm_native's paths against the crc32c PyPI package.

    python bench/bench_crc32c.py [--mib 64] [--reps 7] [--json bench/results/crc32c.json]

Each implementation runs ``--reps`` times over the same buffer, alternating; the medians are
reported in GB/s, with the ratio to the crc32c package (the issue's target: >= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import cpu_model

import nlm_native
from nlm_native import _core


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default="bench/results/crc32c.json")
    args = ap.parse_args()
    buf = np.random.default_rng(0).integers(0, 256, args.mib << 20, dtype=np.uint8).tobytes()
    impls: dict[str, Callable[[bytes], int]] = {
        "nlm_native.crc32c": nlm_native.crc32c,  # the public function: the best path, spans in parallel
        "nlm_native portable": lambda b: _core._crc32c_portable(b, 0)}
    if hasattr(_core, "_crc32c_sse42") and nlm_native.cpu_features()["sse42"]:
        impls["nlm_native sse4.2"] = lambda b: _core._crc32c_sse42(b, 0)
    f = nlm_native.cpu_features()
    if hasattr(_core, "_crc32c_avx512") and f["sse42"] and f["avx512f"] and f["vpclmulqdq"]:
        impls["nlm_native avx512"] = lambda b: _core._crc32c_avx512(b, 0)
    try:
        import crc32c as pypi

        impls["crc32c (PyPI)"] = pypi.crc32c  # type: ignore[assignment]
    except ImportError:
        print("crc32c (PyPI) not installed: pip install crc32c")
    values = {name: fn(buf) for name, fn in impls.items()}
    assert len(set(values.values())) == 1, f"the implementations disagree: {values}"
    times: dict[str, list[float]] = {n: [] for n in impls}
    for _ in range(args.reps):
        for name, fn in impls.items():
            t = time.perf_counter()
            fn(buf)
            times[name].append(time.perf_counter() - t)
    gbs = {n: len(buf) / statistics.median(ts) / 1e9 for n, ts in times.items()}
    ref = gbs.get("crc32c (PyPI)")
    print(f"CPU: {cpu_model()}; {args.mib} MiB, median of {args.reps}; nlm_native uses {_core.crc32c_impl()}")
    bw = _core.kernels.read_bandwidth_gbps(len(buf), 1, 3)
    if bw:
        print(f"memory read bandwidth, 1 thread: {bw:.1f} GB/s")
    print(f"{'implementation':<22}{'GB/s':>8}{'vs PyPI':>10}")
    for n, v in gbs.items():
        print(f"{n:<22}{v:>8.2f}{(v / ref if ref else float('nan')):>10.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_model(), "mib": args.mib, "reps": args.reps, "gb_s": gbs,
                               "impl": _core.crc32c_impl(), "read_bandwidth_1t_gb_s": bw}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
