"""Tokenizer encode throughput: nlm_native.Tokenizer vs llama.cpp's (through llama-cpp-python).

    python bench/bench_tokenizer.py [--vocab PATH ...] [--all-vocabs] [--reps 5] [--lines] [--no-llamacpp]

Vocabularies: the default model (``nlm_native.fetch.fetch()``), or every ``--vocab``
given, or with ``--all-vocabs`` also each ``ggml-vocab-*.gguf`` of
``<shared>/fixtures/vocab`` (``<shared>`` is ``$NLM_SHARED_DIR`` or ``../shared``
beside the repository). Corpora: ``fixtures/oracle/ppl_text.py.txt`` (English/code),
this repository's ``python/nlm_native`` and ``tests`` sources, and a ~50 KB
multilingual text built here. Each corpus is encoded as one string (and with
``--lines`` also line by line, which adds the per-call overhead); no BOS, special
tokens not parsed. Reports median MB/s of UTF-8 input and tokens/s over ``--reps``
timings after one warm-up, alternating the engines in every repetition, plus the
load time of each vocabulary and whether both engines give the same ids (a
correctness side check: printed, never fatal). Writes ``bench/results/tokenizer.json``
(or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlm_native import Tokenizer

REPO = Path(__file__).resolve().parents[1]

MULTILINGUAL_BLOCK = """\
自然语言处理是人工智能的一个重要方向，它研究如何让计算机理解和生成人类语言。
今天的天气很好，我们去公园散步吧！价格是 128.50 元，折扣 15%。
Машинное обучение — это раздел искусственного интеллекта, изучающий методы построения алгоритмов.
Съешь же ещё этих мягких французских булок, да выпей чаю. Ёжик в тумане, 2024 год.
Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️‍🔥 🤖✨🚀 — done ✅
Mixed: The model 模型 has 0.5B параметров and runs at 42 tok/s 🔥; résumé, naïve, façade, Straße.
日本語のテキストも少し：東京は日本の首都です。カタカナ、ひらがな、漢字。
한국어 문장: 안녕하세요, 만나서 반갑습니다. Ελληνικά: Καλημέρα κόσμε! العربية: مرحبا بالعالم.
हिन्दी: नमस्ते दुनिया। Tabs\tand  double  spaces,   trailing spaces\x20\x20\x20
"""


@dataclass
class Corpus:
    name: str
    text: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


@dataclass
class Timing:
    median_s: float
    runs_s: list[float]
    n_tokens: int

    def mb_s(self, n_bytes: int) -> float:
        return n_bytes / self.median_s / 1e6

    def tok_s(self) -> float:
        return self.n_tokens / self.median_s


class Ours:
    name = "nlm_native"

    def __init__(self, path: str) -> None:
        self.tok = Tokenizer.from_gguf(path)

    def encode(self, text: str) -> list[int]:
        # a cold word cache each time: a repeated corpus would otherwise hit it for every word
        self.tok._bpe_cache.clear()
        return self.tok.encode(text)

    def piece(self, tid: int) -> bytes:
        return self.tok.token_bytes(tid)


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, vocab_only=True, verbose=False)

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def piece(self, tid: int) -> bytes:
        return self.llm.detokenize([tid])


Engine = Ours | LlamaCpp


def shared_dir() -> Path:
    return Path(os.environ.get("NLM_SHARED_DIR", REPO.parent / "shared"))


def vocab_paths(args: argparse.Namespace) -> list[str]:
    paths = list(args.vocab or [])
    if args.all_vocabs:
        paths += [str(p) for p in sorted((shared_dir() / "fixtures" / "vocab").glob("ggml-vocab-*.gguf"))]
    if not paths:
        from nlm_native.core.fetch import fetch

        paths = [str(fetch())]
    return paths


def code_corpus() -> str:
    files = sorted((REPO / "python" / "nlm_native").rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
    return "".join(p.read_text(encoding="utf-8") for p in files)


def multilingual_corpus(target_bytes: int = 50_000) -> str:
    n = -(-target_bytes // len(MULTILINGUAL_BLOCK.encode("utf-8")))
    return MULTILINGUAL_BLOCK * n


def corpora() -> list[Corpus]:
    out = []
    ppl = shared_dir() / "fixtures" / "oracle" / "ppl_text.py.txt"
    if ppl.exists():
        out.append(Corpus("ppl_text", ppl.read_text(encoding="utf-8")))
    else:
        print(f"{ppl} not found (set NLM_SHARED_DIR): skipping that corpus", file=sys.stderr)
    out.append(Corpus("code", code_corpus()))
    out.append(Corpus("multilingual", multilingual_corpus()))
    return out


def timed_load(factory: Callable[[str], Engine], path: str) -> tuple[Engine, float]:
    t0 = time.perf_counter()
    engine = factory(path)
    return engine, time.perf_counter() - t0


def make_runner(engine: Engine, text: str, lines: bool) -> Callable[[], list[int]]:
    """One call that encodes the corpus: as a whole, or line by line with the ids concatenated."""
    if not lines:
        return lambda: engine.encode(text)
    parts = text.splitlines(keepends=True)

    def run() -> list[int]:
        ids: list[int] = []
        for p in parts:
            ids.extend(engine.encode(p))
        return ids

    return run


def measure(runners: dict[str, Callable[[], list[int]]], reps: int) -> tuple[dict[str, Timing], dict[str, list[int]]]:
    """Warm each runner up once (its ids kept), then time ``reps`` calls, alternating the engines."""
    ids = {name: run() for name, run in runners.items()}
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            runs[name].append(time.perf_counter() - t0)
    timings = {name: Timing(statistics.median(r), r, len(ids[name])) for name, r in runs.items()}
    return timings, ids


def compare_ids(ours: list[int], theirs: list[int], text: str, eng_ours: Engine, eng_theirs: Engine) -> dict[str, Any]:
    """Positions that differ, the first one, and the text around it (found from our pieces' bytes)."""
    n_diff = sum(a != b for a, b in zip(ours, theirs, strict=False)) + abs(len(ours) - len(theirs))
    res: dict[str, Any] = {"equal": n_diff == 0, "n_diff": n_diff, "n_ours": len(ours), "n_theirs": len(theirs)}
    if n_diff == 0:
        return res
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    offset = sum(len(eng_ours.piece(t)) for t in ours[:first])
    data = text.encode("utf-8")
    res.update(
        first_diff=first,
        byte_offset=offset,
        snippet=data[max(0, offset - 30):offset + 50].decode("utf-8", errors="replace"),
        ours_next=[[t, eng_ours.piece(t).decode("utf-8", errors="replace")] for t in ours[first:first + 6]],
        theirs_next=[[t, eng_theirs.piece(t).decode("utf-8", errors="replace")] for t in theirs[first:first + 6]],
    )
    return res


def bench_vocab(path: str, texts: list[Corpus], args: argparse.Namespace, use_llamacpp: bool) -> dict[str, Any]:
    ours, load_ours = timed_load(Ours, path)
    engines: dict[str, Engine] = {"nlm_native": ours}
    loads = {"nlm_native": load_ours}
    if use_llamacpp:
        engines["llama.cpp"], loads["llama.cpp"] = timed_load(LlamaCpp, path)
    rows = []
    for corpus in texts:
        for lines in (False, True) if args.lines else (False,):
            runners = {name: make_runner(e, corpus.text, lines) for name, e in engines.items()}
            timings, ids = measure(runners, args.reps)
            row: dict[str, Any] = {
                "corpus": corpus.name + (" (lines)" if lines else ""),
                "bytes": corpus.n_bytes,
                "engines": {name: {"mb_s": t.mb_s(corpus.n_bytes), "tok_s": t.tok_s(), "n_tokens": t.n_tokens,
                                   "median_s": t.median_s, "runs_s": t.runs_s} for name, t in timings.items()},
            }
            if use_llamacpp:
                row["ids"] = compare_ids(ids["nlm_native"], ids["llama.cpp"], corpus.text, ours, engines["llama.cpp"])
            rows.append(row)
    return {"vocab": Path(path).name, "path": path, "load_s": loads, "rows": rows}


def ids_cell(row: dict[str, Any]) -> str:
    if "ids" not in row:
        return "-"
    c = row["ids"]
    return "yes" if c["equal"] else f"no: {c['n_diff']} differ, first @{c['first_diff']}"


def print_table(results: list[dict[str, Any]], use_llamacpp: bool) -> None:
    print("| vocab | corpus | KB | ours MB/s | llama.cpp MB/s | ratio | ids equal | ours tok/s | llama.cpp tok/s |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for v in results:
        for row in v["rows"]:
            o = row["engines"]["nlm_native"]
            t = row["engines"].get("llama.cpp")
            theirs = f"{t['mb_s']:.2f}" if t else "-"
            ratio = f"{o['mb_s'] / t['mb_s']:.2f}x" if t else "-"
            theirs_tok = f"{t['tok_s']:,.0f}" if t else "-"
            print(f"| {v['vocab']} | {row['corpus']} | {row['bytes'] / 1e3:.1f} | {o['mb_s']:.2f} | {theirs} | {ratio} "
                  f"| {ids_cell(row)} | {o['tok_s']:,.0f} | {theirs_tok} |")
    print("\nratio = ours / llama.cpp (above 1: we are faster)\n")
    print("| vocab | ours load s | llama.cpp load s |")
    print("|---|---:|---:|")
    for v in results:
        theirs = f"{v['load_s']['llama.cpp']:.3f}" if use_llamacpp else "-"
        print(f"| {v['vocab']} | {v['load_s']['nlm_native']:.3f} | {theirs} |")


def print_mismatches(results: list[dict[str, Any]]) -> None:
    for v in results:
        for row in v["rows"]:
            c = row.get("ids")
            if c and not c["equal"]:
                print(f"\nids differ: {v['vocab']} / {row['corpus']}: {c['n_diff']} positions "
                      f"(ours {c['n_ours']} tokens, llama.cpp {c['n_theirs']}), first at token {c['first_diff']}, "
                      f"byte {c['byte_offset']}")
                print(f"  text:      {c['snippet']!r}")
                print(f"  ours:      {c['ours_next']}")
                print(f"  llama.cpp: {c['theirs_next']}")


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python not installed: measuring nlm_native only", file=sys.stderr)
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", action="append", metavar="PATH", help="a GGUF to take the vocabulary from (repeatable)")
    ap.add_argument("--all-vocabs", action="store_true", help="add every <shared>/fixtures/vocab/ggml-vocab-*.gguf")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lines", action="store_true", help="also encode each corpus line by line")
    ap.add_argument("--no-llamacpp", action="store_true", help="measure nlm_native only")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "tokenizer.json"))
    args = ap.parse_args()

    use_llamacpp = not args.no_llamacpp and llamacpp_available()
    texts = corpora()
    results = []
    for path in vocab_paths(args):
        try:
            results.append(bench_vocab(path, texts, args, use_llamacpp))
        except ValueError as e:  # a vocabulary our tokenizer does not support
            print(f"{path}: skipped: {e}", file=sys.stderr)
    print_table(results, use_llamacpp)
    print_mismatches(results)

    out = {
        "machine": platform.processor() or platform.machine(),
        "reps": args.reps,
        "llamacpp": use_llamacpp,
        "corpora": {c.name: c.n_bytes for c in texts},
        "vocabs": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
