"""Per-token cost of grammar-constrained decoding: llguidance vs xgrammar on the model's vocabulary.

    PYTHONPATH=/path/to/grammar-libs python bench/bench_grammar.py [--model PATH] [--reps 3] [--json PATH]
        [--libs llguidance xgrammar]

Both libraries get their tokenizer object from ``nlm_native.Tokenizer``'s raw token bytes (no
Hugging Face tokenizer): control tokens are special tokens (llguidance: their text behind the
0xFF marker; xgrammar: empty), unused/padding tokens (``[PAD...]`` and any id between the
tokenizer's length and the model's ``n_vocab``) are empty and must never be allowed, and the
end-of-generation ids (eos plus end-of-turn control tokens) are the stop tokens.

Three grammars: (a) a JSON schema with nested objects, enums, arrays and required fields,
(b) any JSON object (json_object mode), (c) a small call-list grammar (Lark for llguidance,
GBNF/EBNF for xgrammar). Each is driven through a valid target text tokenized with
``Tokenizer.encode``: per token the mask (bitmask over ``n_vocab``) is computed into a numpy
buffer, the target token is checked to be allowed (and no padding/control token), then the
token is consumed; at the end EOS must be allowed and accepted. Timed per token: mask
computation and consume, in microseconds, over ``--reps`` fresh matchers (the first one
included: a new request starts cold). Also timed: tokenizer build, grammar compile, matcher
creation, and turning the bitmask into a boolean / -inf additive mask with numpy.

Runs single-threaded where the library lets us choose (``RAYON_NUM_THREADS=1``, xgrammar
``max_threads=1``, torch 1 thread). A library that is not importable is skipped with a
message; xgrammar additionally needs torch. Writes ``bench/results/grammar.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# GGUF tokenizer.ggml.token_type values
TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 3, 4, 5
END_OF_TURN = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>",
               "<|end_of_text|>", "<EOT>")

# --- workloads ------------------------------------------------------------------------

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1},
        "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string"},
                "tier": {"enum": ["free", "pro", "enterprise"]},
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                   "country": {"type": "string", "minLength": 2, "maxLength": 2}},
                    "required": ["city", "country"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "tier", "address"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "gift": {"type": "boolean"},
                },
                "required": ["sku", "quantity", "unit_price"],
                "additionalProperties": False,
            },
        },
        "notes": {"type": ["string", "null"]},
    },
    "required": ["order_id", "status", "customer", "items"],
    "additionalProperties": False,
}


def order_document() -> str:
    """A valid document for ORDER_SCHEMA (properties in schema order), ~300 tokens."""
    items = [
        {"sku": "KB-2041-BLK", "quantity": 2, "unit_price": 49.99, "tags": ["keyboard", "mechanical"], "gift": False},
        {"sku": "MS-118", "quantity": 1, "unit_price": 19.5, "tags": ["mouse"]},
        {"sku": "CBL-USB-C-2M", "quantity": 4, "unit_price": 7.25, "tags": ["cable", "usb-c", "2m"], "gift": True},
        {"sku": "MON-27-4K", "quantity": 1, "unit_price": 329.0, "tags": ["monitor", "4k", "27 inch"]},
        {"sku": "STD-ARM-01", "quantity": 1, "unit_price": 89.9},
    ]
    doc = {
        "order_id": 100234,
        "status": "shipped",
        "customer": {
            "name": "Zoë Müller-Łukasiewicz",
            "email": "zoe.mueller@example.com",
            "tier": "pro",
            "address": {"street": "Hauptstraße 12, 3. OG", "city": "München", "country": "DE"},
        },
        "items": items,
        "notes": "Leave at the front desk — call +49 89 1234567 on arrival. 📦 Danke!",
    }
    return json.dumps(doc, ensure_ascii=False)


CALLS_LARK = r"""
start: call ("\n" call)*
call: NAME "(" [arg ("," " "? arg)*] ")"
arg: NAME "=" value
value: NUMBER | STRING | "true" | "false" | "null"
NAME: /[a-z_][a-z0-9_]*/
NUMBER: /-?[0-9]+(\.[0-9]+)?/
STRING: /"[^"\n\\]*"/
"""

CALLS_EBNF = r"""
root ::= call ("\n" call)*
call ::= name "(" (arg ("," " "? arg)*)? ")"
arg ::= name "=" value
value ::= number | string | "true" | "false" | "null"
name ::= [a-z_] [a-z0-9_]*
number ::= "-"? [0-9]+ ("." [0-9]+)?
string ::= "\"" [^"\n\\]* "\""
"""


def calls_document() -> str:
    lines = [
        'get_weather(city="Berlin", unit="celsius", days=3)',
        'search_flights(origin="MUC", destination="SFO", date="2025-03-14", passengers=2, nonstop=true)',
        'book_hotel(city="San Francisco", nights=4, max_price=250.0, breakfast=false)',
        'send_email(to="ops@example.com", subject="Deploy finished", body="All 42 services are green.")',
        'create_ticket(project="INFRA", priority=2, title="Rotate TLS certificates", assignee=null)',
        'convert_currency(amount=1999.99, source="EUR", target="USD")',
        'schedule_meeting(title="Sprint review", start="2025-03-20T15:00", duration_min=45, remote=true)',
        'resize_image(path="/tmp/photo_0042.jpg", width=1024, height=768, keep_aspect=true)',
    ]
    return "\n".join(lines)


@dataclass
class Workload:
    name: str
    target: str
    ids: list[int] = field(default_factory=list)


def workloads() -> list[Workload]:
    return [Workload("json_schema", order_document()), Workload("json_object", order_document()),
            Workload("lark/ebnf", calls_document())]


# --- vocabulary -----------------------------------------------------------------------

def _module(*names: str) -> Any:
    """The first importable of ``names`` (the package layout moves between versions)."""
    err: ImportError | None = None
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            err = e
    raise ImportError(f"none of {names} importable: {err}")


def default_model_path() -> str:
    return str(_module("nlm_native.fetch", "nlm_native.core.fetch").default_model_path())


@dataclass
class Vocab:
    """What the grammar libraries need, derived from nlm_native's tokenizer."""

    tokenizer: Any
    n_vocab: int                      # model logits width (>= len(tokenizer))
    token_bytes: list[bytes]          # raw bytes; b"" for control and unused/padding ids
    special_ids: list[int]            # control tokens (not user-defined ones such as <tool_call>)
    pad_ids: list[int]                # unused/padding ids: must never be allowed
    eog_ids: list[int]                # end-of-generation ids, eos first
    forbidden_words: np.ndarray       # bitmask (uint32 words) of ids no grammar may allow (pads, non-eog controls)
    prep_ms: float

    @property
    def n_words(self) -> int:
        return (self.n_vocab + 31) // 32


def tokenizer_class() -> Any:
    for name in ("nlm_native", "nlm_native.text", "nlm_native.tokenizer"):
        cls = getattr(_module(name), "Tokenizer", None)
        if cls is not None:
            return cls
    raise ImportError("nlm_native has no Tokenizer")


def load_vocab(path: str) -> Vocab:
    t0 = time.perf_counter()
    tok = tokenizer_class().from_gguf(path)
    n_vocab = len(tok)
    try:  # the model's logits width: rows of the output (or tied embedding) matrix
        contents = _module("nlm_native.gguf", "nlm_native.core.gguf").read(path)
        shapes = {t.name: t.shape for t in contents.tensors}
        shape = shapes.get("output.weight") or shapes.get("token_embd.weight")
        if shape:
            n_vocab = max(n_vocab, int(shape[1]))
    except (ImportError, ValueError, AttributeError) as e:
        print(f"could not read n_vocab from the tensors ({e}); using len(tokenizer) = {n_vocab}", file=sys.stderr)
    n_tok = len(tok)
    token_bytes, special, pads = [], [], []
    for i in range(n_tok):
        ty = tok.types[i]
        if ty == TOKEN_UNUSED:
            token_bytes.append(b"")
            pads.append(i)
            continue
        if ty == TOKEN_CONTROL:
            special.append(i)
        token_bytes.append(tok.token_bytes(i))  # b"" for control tokens
    token_bytes += [b""] * (n_vocab - n_tok)
    pads += list(range(n_tok, n_vocab))
    eog = [tok.eos_id] if tok.eos_id is not None else []
    for text in END_OF_TURN:
        tid = tok.vocab.get(text)
        if tid is not None and tok.types[tid] == TOKEN_CONTROL and tid not in eog:
            eog.append(tid)
    if not eog:
        raise ValueError(f"{path}: no eos / end-of-turn token")
    forbidden = np.zeros(n_vocab + (-n_vocab) % 32, dtype=bool)
    forbidden[pads] = True
    forbidden[[i for i in special if i not in eog]] = True
    words = np.packbits(forbidden, bitorder="little").view(np.uint32)
    return Vocab(tok, n_vocab, token_bytes, special, pads, eog, words, (time.perf_counter() - t0) * 1e3)


def bool_mask(words: np.ndarray, n_vocab: int) -> np.ndarray:
    """Bitmask (int32/uint32 words, bit i of word i // 32 = token i) -> bool array of length n_vocab."""
    return np.unpackbits(words.view(np.uint8), count=n_vocab, bitorder="little").view(np.bool_)


def apply_mask(logits: np.ndarray, words: np.ndarray) -> None:
    """Set the logits of disallowed tokens to -inf in place."""
    np.copyto(logits, np.float32(-np.inf), where=~bool_mask(words, logits.shape[-1]))


# --- timing ---------------------------------------------------------------------------

def us_stats(ns: list[int]) -> dict[str, float]:
    if not ns:
        return {}
    us = sorted(x / 1e3 for x in ns)
    p95 = us[min(len(us) - 1, round(0.95 * (len(us) - 1)))]
    return {"mean": statistics.fmean(us), "p50": statistics.median(us), "p95": p95, "max": us[-1], "n": len(us)}


@dataclass
class Drive:
    mask_ns: list[int] = field(default_factory=list)
    consume_ns: list[int] = field(default_factory=list)


def drive(ids: list[int], vocab: Vocab, make_fill: Callable[[np.ndarray], Callable[[], object]],
          consume: Callable[[int], bool], lib: str, wl: str, out: Drive) -> np.ndarray:
    """Feed ``ids`` through a matcher: mask, check, consume; returns the mask after the last token.

    ``make_fill(buf)`` returns the call that writes the next mask into ``buf`` (int32, shape (1, n_words))."""
    buf = np.zeros((1, vocab.n_words), dtype=np.int32)
    words = buf[0].view(np.uint32)
    fill = make_fill(buf)
    for k, tid in enumerate(ids):
        t0 = time.perf_counter_ns()
        fill()
        t1 = time.perf_counter_ns()
        if not (words[tid >> 5] >> (tid & 31)) & 1:
            raise AssertionError(f"{lib}/{wl}: target token #{k} {tid} {vocab.token_bytes[tid]!r} not allowed")
        if (words & vocab.forbidden_words).any():
            bad = np.flatnonzero(bool_mask(words & vocab.forbidden_words, vocab.n_vocab))[:5].tolist()
            raise AssertionError(f"{lib}/{wl}: padding/control tokens allowed at #{k}: {bad}")
        t2 = time.perf_counter_ns()
        ok = consume(tid)
        t3 = time.perf_counter_ns()
        if not ok:
            raise AssertionError(f"{lib}/{wl}: consuming token #{k} {tid} {vocab.token_bytes[tid]!r} failed")
        out.mask_ns.append(t1 - t0)
        out.consume_ns.append(t3 - t2)
    fill()
    eos = vocab.eog_ids[0]
    if not (words[eos >> 5] >> (eos & 31)) & 1:
        raise AssertionError(f"{lib}/{wl}: EOS not allowed at the end")
    return words.copy()


def result_row(lib: str, wl: Workload, build_ms: float, compile_ms: list[float], matcher_ms: list[float],
               d: Drive, reps: int, extra: dict[str, Any]) -> dict[str, Any]:
    n = len(wl.ids)
    first = Drive(d.mask_ns[:n], d.consume_ns[:n])
    return {
        "library": lib, "grammar": wl.name, "tokens": n, "reps": reps,
        "tokenizer_build_ms": build_ms,
        "compile_ms": statistics.median(compile_ms), "compile_ms_first": compile_ms[0],
        "matcher_ms": statistics.median(matcher_ms),
        "mask_us": us_stats(d.mask_ns), "consume_us": us_stats(d.consume_ns),
        "first_rep_mask_us": us_stats(first.mask_ns), **extra,
    }


# --- llguidance -----------------------------------------------------------------------

class _EncodeCallback:
    """The ``TokenizerWrapper`` protocol: tokens, eos/bos ids, special ids, ``__call__(bytes) -> ids``."""

    def __init__(self, vocab: Vocab) -> None:
        tok = vocab.tokenizer
        self.eos_token_id = vocab.eog_ids[0]
        self.bos_token_id = None  # Qwen adds no BOS; llguidance only stores it
        # control tokens: their text; TokenizerWrapper prefixes 0xFF for the ids in special_token_ids,
        # which makes them "special" (lark: <|im_end|> or <[151645]>), never matched by plain bytes
        self.tokens = list(vocab.token_bytes)
        for i in vocab.special_ids:
            self.tokens[i] = tok.tokens[i].encode("utf-8")
        self.special_token_ids = list(vocab.special_ids)
        self._tok = tok
        self.calls = 0

    def __call__(self, data: bytes) -> list[int]:
        self.calls += 1
        return list(self._tok.encode(data.decode("utf-8", errors="replace")))


def bench_llguidance(vocab: Vocab, wls: list[Workload], reps: int) -> list[dict[str, Any]]:
    llg = importlib.import_module("llguidance")
    cb = _EncodeCallback(vocab)
    t0 = time.perf_counter()
    lltok = llg.LLTokenizer(llg.TokenizerWrapper(cb), n_vocab=vocab.n_vocab, eos_token=vocab.eog_ids)
    build_ms = (time.perf_counter() - t0) * 1e3
    assert lltok.vocab_size == vocab.n_vocab, (lltok.vocab_size, vocab.n_vocab)
    grammars: dict[str, Callable[[], str]] = {
        "json_schema": lambda: llg.LLMatcher.grammar_from_json_schema(ORDER_SCHEMA),
        "json_object": lambda: llg.LLMatcher.grammar_from_json_schema({"type": "object"}),
        "lark/ebnf": lambda: llg.LLMatcher.grammar_from_lark(CALLS_LARK),
    }
    rows = []
    for wl in wls:
        d, compile_ms, copy_ms = Drive(), [], []
        calls_before = cb.calls
        for _ in range(reps):
            t0 = time.perf_counter()
            m = llg.LLMatcher(lltok, grammars[wl.name](), log_level=0)
            compile_ms.append((time.perf_counter() - t0) * 1e3)
            if m.is_error():
                raise AssertionError(f"llguidance/{wl.name}: {m.get_error()}")
            t0 = time.perf_counter()
            m.deep_copy()
            copy_ms.append((time.perf_counter() - t0) * 1e3)
            ff = m.compute_ff_bytes()
            # llguidance.numpy.fill_next_token_bitmask(m, buf) does the same plus ~2 µs of checks
            drive(wl.ids, vocab, lambda buf, m=m: partial(m.unsafe_compute_mask_ptr, buf.ctypes.data, buf.nbytes),
                  m.consume_token, "llguidance", wl.name, d)
            if not m.is_accepting():
                raise AssertionError(f"llguidance/{wl.name}: not accepting at the end")
            stopped_before_eos = m.is_stopped()
            if not m.consume_token(vocab.eog_ids[0]) or not m.is_stopped() or m.is_error():
                raise AssertionError(f"llguidance/{wl.name}: EOS not consumed: {m.get_error()}")
            reason = m.stop_reason()
        rows.append(result_row("llguidance", wl, build_ms, compile_ms, copy_ms, d, reps, {
            "stopped_before_eos": stopped_before_eos, "stop_reason_after_eos": reason,
            "forced_bytes_at_start": ff.decode("utf-8", errors="replace"),
            "encode_callbacks": cb.calls - calls_before, "matcher_is": "deep_copy ms"}))
    return rows


# --- xgrammar -------------------------------------------------------------------------

def bench_xgrammar(vocab: Vocab, wls: list[Workload], reps: int) -> list[dict[str, Any]]:
    xgr = importlib.import_module("xgrammar")
    try:
        torch = importlib.import_module("torch")
        torch.set_num_threads(1)
    except ImportError:
        pass
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(vocab.token_bytes, xgr.VocabType.RAW, vocab_size=vocab.n_vocab,
                             stop_token_ids=vocab.eog_ids, add_prefix_space=False)
    build_ms = (time.perf_counter() - t0) * 1e3
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    schema = json.dumps(ORDER_SCHEMA)
    compile_fns: dict[str, Callable[[], Any]] = {
        "json_schema": lambda: compiler.compile_json_schema(schema),
        "json_object": compiler.compile_builtin_json_grammar,
        "lark/ebnf": lambda: compiler.compile_grammar(CALLS_EBNF),
    }
    rows = []
    for wl in wls:
        d, compile_ms, matcher_ms = Drive(), [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            cg = compile_fns[wl.name]()
            t1 = time.perf_counter()
            m = xgr.GrammarMatcher(cg)
            t2 = time.perf_counter()
            compile_ms.append((t1 - t0) * 1e3)
            matcher_ms.append((t2 - t1) * 1e3)
            ff = m.find_jump_forward_string()
            drive(wl.ids, vocab, lambda buf, m=m: partial(m.fill_next_token_bitmask, buf), m.accept_token,
                  "xgrammar", wl.name, d)
            if not m.is_completed():
                raise AssertionError(f"xgrammar/{wl.name}: not completed at the end")
            terminated_before_eos = m.is_terminated()
            if not m.accept_token(vocab.eog_ids[0]) or not m.is_terminated():
                raise AssertionError(f"xgrammar/{wl.name}: stop token not accepted")
        rows.append(result_row("xgrammar", wl, build_ms, compile_ms, matcher_ms, d, reps, {
            "stopped_before_eos": terminated_before_eos, "forced_bytes_at_start": ff,
            "compiled_bytes": cg.memory_size_bytes, "matcher_is": "GrammarMatcher() ms"}))
    return rows


# --- mask conversion ------------------------------------------------------------------

def string_content_mask(vocab: Vocab) -> np.ndarray:
    """A realistic dense mask without a library: the tokens a JSON string's content may continue with."""
    bad = set(range(0x20)) | {0x22, 0x5C, 0x7F}
    allowed = np.zeros(vocab.n_words * 32, dtype=bool)
    allowed[:vocab.n_vocab] = [bool(b) and not bad.intersection(b) for b in vocab.token_bytes]
    return np.packbits(allowed, bitorder="little").view(np.uint32)


def bench_conversion(vocab: Vocab, words: np.ndarray, iters: int = 200) -> dict[str, Any]:
    """numpy cost of bitmask -> bool array, and of applying it to float32 logits as -inf."""
    logits = np.random.default_rng(0).standard_normal(vocab.n_vocab).astype(np.float32)
    work = logits.copy()
    out: dict[str, Any] = {}
    for name, fn in {
        "bitmask_to_bool": lambda: bool_mask(words, vocab.n_vocab),
        "apply_-inf_copyto": lambda: apply_mask(work, words),
        "additive_mask_where": lambda: np.where(bool_mask(words, vocab.n_vocab), np.float32(0), np.float32(-np.inf)),
        "allowed_ids_flatnonzero": lambda: np.flatnonzero(bool_mask(words, vocab.n_vocab)),
    }.items():
        ns = []
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            fn()
            ns.append(time.perf_counter_ns() - t0)
        out[name] = us_stats(ns)
    np.copyto(work, logits)
    apply_mask(work, words)
    allowed = bool_mask(words, vocab.n_vocab)
    assert np.isneginf(work[~allowed]).all() and (work[allowed] == logits[allowed]).all()
    out["allowed_in_mask"] = int(allowed.sum())
    return out


# --- main -----------------------------------------------------------------------------

LIBS: dict[str, Callable[[Vocab, list[Workload], int], list[dict[str, Any]]]] = {
    "llguidance": bench_llguidance, "xgrammar": bench_xgrammar,
}


def lib_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| library | grammar | tokens | tok build ms | compile ms | matcher ms | mask µs mean | p50 | p95 "
          "| 1st-rep mean | consume µs mean | p50 | p95 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mk, cs, fr = r["mask_us"], r["consume_us"], r["first_rep_mask_us"]
        print(f"| {r['library']} | {r['grammar']} | {r['tokens']} | {r['tokenizer_build_ms']:.0f} "
              f"| {r['compile_ms']:.2f} | {r['matcher_ms']:.3f} | {mk['mean']:.1f} | {mk['p50']:.1f} "
              f"| {mk['p95']:.1f} | {fr['mean']:.1f} | {cs['mean']:.1f} | {cs['p50']:.1f} | {cs['p95']:.1f} |")
    print("\ncompile ms: llguidance = grammar_from_*() + LLMatcher() (it compiles per matcher), matcher ms = "
          "deep_copy() of a fresh matcher; xgrammar = GrammarCompiler.compile_*() (cache off), "
          "matcher ms = GrammarMatcher()")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF with the vocabulary (default: the default model, fetched)")
    ap.add_argument("--reps", type=int, default=3, help="fresh matchers per grammar (default 3)")
    ap.add_argument("--libs", nargs="+", choices=sorted(LIBS), default=list(LIBS))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "grammar.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # llguidance's pool (LLExecutor only); before import
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    path = args.model or default_model_path()
    vocab = load_vocab(path)
    print(f"vocab: {Path(path).name}: n_vocab {vocab.n_vocab}, tokenizer {len(vocab.tokenizer)}, "
          f"{len(vocab.pad_ids)} padding, {len(vocab.special_ids)} control, eog {vocab.eog_ids}, "
          f"prepared in {vocab.prep_ms:.0f} ms", file=sys.stderr)
    wls = workloads()
    for wl in wls:
        wl.ids = list(vocab.tokenizer.encode(wl.target))

    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in args.libs:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"{name}: not importable ({e}); skipped", file=sys.stderr)
            skipped[name] = str(e)
            continue
        rows += LIBS[name](vocab, wls, args.reps)
    if rows:
        print_table(rows)
    conv = bench_conversion(vocab, string_content_mask(vocab))
    print(f"\nmask -> numpy over n_vocab={vocab.n_vocab} (inside-a-JSON-string mask, {conv['allowed_in_mask']} "
          "allowed), µs p50: " + ", ".join(f"{k} {v['p50']:.1f}" for k, v in conv.items() if isinstance(v, dict)))

    out = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "model": Path(path).name, "n_vocab": vocab.n_vocab, "tokenizer_len": len(vocab.tokenizer),
        "eog_ids": vocab.eog_ids, "n_padding": len(vocab.pad_ids), "n_control": len(vocab.special_ids),
        "versions": {n: lib_version(n) for n in LIBS} | {"numpy": np.__version__},
        "threads": {"RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS"), "xgrammar_max_threads": 1},
        "workloads": {wl.name: {"tokens": len(wl.ids), "chars": len(wl.target)} for wl in wls},
        "rows": rows, "mask_conversion_us": conv, "skipped": skipped,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
