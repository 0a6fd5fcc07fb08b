"""16 clients at once against ``nlm serve``: streaming and not, some hanging up mid-stream. Every answer
that completes is the one the model gives alone; nothing fails but what was provoked; afterwards only
the prefix cache holds blocks, and memory settles. ``NLM_SOAK_SECONDS`` turns it into a soak."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_server import KEY, Live

from nlm_native import LLM
from nlm_native.server import ServerConfig, create_app

# a generator left to the garbage collector runs its cleanup in whatever thread collects it: an error
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

CLIENTS = 16
WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def prompt(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12 + i % 7))


def test_sixteen_clients_streaming_and_hanging_up(tiny_chat_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, model_name="tiny", max_seqs=16) as llm, \
            Live(create_app(ServerConfig(api_keys=[KEY], metrics_store="off"), llm)) as live:
        want = {i: llm.create_completion(prompt(i), max_tokens=24, temperature=0)["choices"][0]["text"]
                for i in range(8)}
        headers = {"Authorization": f"Bearer {KEY}"}
        failures: list[str] = []
        done = {"whole": 0, "streamed": 0, "hung_up": 0}
        lock = threading.Lock()

        # one connection pool per client, kept across waves as real clients keep theirs (a new httpx.Client
        # builds an SSL context each time: its native memory would be the test's growth, not the server's)
        pools = [httpx.Client(base_url=live.url, headers=headers, timeout=120) for _ in range(CLIENTS)]

        def client(c: int, rounds: int) -> None:
            h = pools[c]
            if h:
                for r in range(rounds):
                    i = (c + r) % 8
                    body = {"prompt": prompt(i), "max_tokens": 24, "temperature": 0}
                    if (c + r) % 3 == 0:
                        resp = h.post("/v1/completions", json=body)
                        if resp.status_code != 200 or resp.json()["choices"][0]["text"] != want[i]:
                            failures.append(f"client {c} round {r}: {resp.status_code} {resp.text[:200]}")
                        kind = "whole"
                    else:
                        hang_up = (c + r) % 5 == 0
                        text, events = "", 0
                        with h.stream("POST", "/v1/completions", json=body | {"stream": True}) as resp:
                            if resp.status_code != 200:
                                failures.append(f"client {c} round {r}: stream {resp.status_code}")
                                continue
                            for line in resp.iter_lines():
                                if not line.startswith("data: ") or line == "data: [DONE]":
                                    continue
                                chunk = json.loads(line[6:])
                                text += "".join(ch["text"] for ch in chunk["choices"])
                                events += 1
                                if hang_up and events == 2:
                                    break
                        if not hang_up and text != want[i]:
                            failures.append(f"client {c} round {r}: streamed {text!r}, alone {want[i]!r}")
                        kind = "hung_up" if hang_up else "streamed"
                    with lock:
                        done[kind] += 1

        def wave(rounds: int) -> None:
            threads = [threading.Thread(target=client, args=(c, rounds)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        wave(1)  # warm-up: grows the scratch buffers and fills the prefix cache
        base = rss()
        deadline = time.monotonic() + float(os.environ.get("NLM_SOAK_SECONDS", "0"))
        waves = 0
        samples: list[int] = []  # the server's own RSS (/admin/memory) after each wave
        while waves < 2 or time.monotonic() < deadline:
            wave(2)
            waves += 1
            samples.append(httpx.get(live.url + "/admin/memory", headers=headers).json()["rss_bytes"])
        assert not failures, failures[:5]
        assert done["whole"] and done["streamed"] and done["hung_up"]
        t = time.monotonic()
        while (s := llm.engine.stats()).running or s.waiting or s.prefilling:
            assert time.monotonic() - t < 10, "requests still running after every client left"
            time.sleep(0.05)
        kept = set(llm.prefix_cache.sequences()) if llm.prefix_cache is not None else set()
        assert set(llm.model.sequences()) <= kept  # nothing but the prefix cache holds blocks
        grown = rss() - base
        print(f"{sum(done.values())} requests ({done}); RSS {base >> 20} MiB, +{grown >> 20} MiB after {waves} waves")
        assert grown < 64 << 20, f"RSS grew by {grown >> 20} MiB"
        if len(samples) >= 8:  # a soak: the second half holds no growth the first did not (no leak per request)
            q = len(samples) // 4
            mid, end = sorted(samples[q:2 * q])[q // 2], sorted(samples[-q:])[q // 2]
            print(f"/admin/memory RSS over {len(samples)} waves: first {samples[0] >> 20} MiB, second-quarter "
                  f"median {mid >> 20} MiB, last-quarter median {end >> 20} MiB, max {max(samples) >> 20} MiB")
            assert end - mid < 4 << 20, f"RSS still grew by {(end - mid) >> 20} MiB in the second half"
        h = httpx.get(live.url + "/health").json()
        assert h["status"] == "ok" and h["queue"] == {"running": 0, "prefilling": 0, "waiting": 0}
        for p in pools:
            p.close()
