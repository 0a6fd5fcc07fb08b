"""Streaming text: the incremental detokenizer on real vocabularies, and stop matching with hold-back.

Detokenizer properties (each of llama.cpp's five vocab fixtures): the pieces concatenate to
``Tokenizer.decode`` of the ids, a prefix of the stream is always a prefix of the full decode, valid
text never shows U+FFFD, and nothing is held back longer than an unfinished character.

StopMatcher properties: against a naive reference (whole text, earliest occurrence of any stop, cut)
over seeded random texts, stop sets and splits into deltas.
"""

from __future__ import annotations

import os
import random
from functools import cache
from pathlib import Path

import pytest

from nlm_native import IncrementalDetokenizer, Tokenizer
from nlm_native.text.stops import StopMatcher
from nlm_native.text.tokenizer import TOKEN_BYTE, bytes_to_unicode

from real_model import shared_dir

VOCABS = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2"]
SPM_VOCABS = ["llama-spm", "phi-3"]


# --- fixtures -----------------------------------------------------------------------------


def vocab_dir() -> Path:
    d = shared_dir() / "fixtures" / "vocab"
    if not d.exists():
        if os.environ.get("CI"):
            pytest.fail(f"vocab fixtures missing: {d}")
        pytest.skip(f"vocab fixtures not found at {d} (set NLM_SHARED_DIR)")
    return d


@cache
def _load(name: str) -> Tokenizer:
    return Tokenizer.from_gguf(vocab_dir() / f"ggml-vocab-{name}.gguf")


def tokenizer(name: str) -> Tokenizer:
    vocab_dir()  # skip / fail before the cache sees a missing file
    return _load(name)


def vector_texts(name: str) -> list[str]:
    inputs = (vocab_dir() / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    texts = inputs.split("\n__ggml_vocab_test__\n")
    assert len(texts) > 40
    return texts


def _random_unicode(seed: int, n: int) -> str:
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E), (0xA0, 0xFF), (0x370, 0x3FF), (0x400, 0x4FF), (0x300, 0x36F),  # combining marks
        (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF),
        (0x200D, 0x200D), (0xFE0F, 0xFE0F), (0x10000, 0x1007F), (0xE000, 0xE0FF),
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.15:
            out.append(" ")
    return "".join(out)


EXTRA_TEXTS = [
    "🙂", "Hello 🙂 world 🌍!", "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "e\u0301 a\u0300\u0323 n\u0303 Z\u0351\u0345\u036b\u0364 combining",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𐍈 gothic", "€100 ≠ £90 — “quotes” …", " leading space", "  two leading",
    "\u2581already a marker", "ĠĊ bytes-to-unicode lookalikes", "\x00\x01 control\x7f chars",
    _random_unicode(1, 300), _random_unicode(2, 300), _random_unicode(3, 120),
]


def _incomplete_tail(data: bytes) -> int:
    """Bytes at the end of valid-UTF-8-prefix ``data`` that are an unfinished character."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # lead byte (or ASCII)
            need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return back if back < need else 0
    return 0


def _strip(tok: Tokenizer, text: str) -> str:
    if tok.model == "llama" and tok.add_space_prefix and text.startswith(" "):
        return text[1:]
    return text


# --- detokenizer: real texts ----------------------------------------------------------------


def _stream_text(tok: Tokenizer, text: str, stats: dict[str, int]) -> None:
    ids = tok.encode(text)
    full = tok.decode(ids)
    det = IncrementalDetokenizer(tok)
    valid = "\ufffd" not in full  # the text came out whole (no <unk> mangling to U+FFFD)
    chunks: list[str] = []
    so_far = b""
    for tid in ids:
        piece = det.push(tid)
        chunks.append(piece)
        so_far += tok.token_bytes(tid)
        joined = "".join(chunks)
        assert det.text == joined
        assert full.startswith(joined), (text, ids, joined)
        if valid:
            assert "\ufffd" not in piece, (text, tid, piece)
            # nothing held back but an unfinished character, and all of that is pending
            tail = _incomplete_tail(so_far)
            assert det.pending_bytes == tail, (text, tid)
            assert joined == _strip(tok, so_far[: len(so_far) - tail].decode("utf-8")), (text, tid)
            if tail:
                stats["split_chars"] += 1
        if tok.model == "llama" and tok.types[tid] == TOKEN_BYTE:
            stats["byte_tokens"] += 1
    end = det.flush()
    assert "".join(chunks) + end == full, (text, ids)
    assert det.text == full
    assert det.pending_bytes == 0
    if valid:
        assert end == ""  # the last token of valid text completes its character
        assert full == text or tok.model == "llama"  # SPM may map unknowns; BPE is lossless


@pytest.mark.parametrize("name", VOCABS)
def test_detokenizer_on_test_vectors_and_unicode(name: str) -> None:
    tok = tokenizer(name)
    stats = {"split_chars": 0, "byte_tokens": 0}
    for text in vector_texts(name) + EXTRA_TEXTS:
        _stream_text(tok, text, stats)
    # the texts above really do split characters across tokens
    assert stats["split_chars"] > 50, stats
    if tok.model == "llama":
        assert stats["byte_tokens"] > 50, stats


# --- detokenizer: byte-level details --------------------------------------------------------


def _byte_token_ids(tok: Tokenizer) -> dict[int, int]:
    """Byte value -> id of the token that is exactly that one byte."""
    if tok.model == "llama":
        return dict(tok.byte_ids)
    b2u = bytes_to_unicode()
    return {b: tok.vocab[b2u[b]] for b in range(256)}


@pytest.mark.parametrize("name", SPM_VOCABS)
def test_spm_byte_fallback_reassembles(name: str) -> None:
    tok = tokenizer(name)
    ids = tok.encode("🙂")
    assert [tok.tokens[i] for i in ids if tok.types[i] == TOKEN_BYTE] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    det = IncrementalDetokenizer(tok)
    pieces, pending = [], []
    for tid in ids:
        pieces.append(det.push(tid))
        pending.append(det.pending_bytes)
    assert pieces[-1].endswith("🙂") and all("\ufffd" not in p for p in pieces)
    assert pending[-4:] == [1, 2, 3, 0]
    assert "".join(pieces) + det.flush() == tok.decode(ids) == "🙂"

    # byte tokens pushed by hand, in the middle of normal text
    byte = tok.byte_ids
    head = tok.encode("price")
    ids = head + [byte[0xE2], byte[0x82], byte[0xAC]] + tok.encode("5")
    det = IncrementalDetokenizer(tok)
    out = [det.push(i) for i in ids]
    n = len(head)
    assert out[n : n + 3] == ["", "", "€"] and "".join(out[:n]) == "price"
    assert "".join(out) + det.flush() == tok.decode(ids) == "price€ 5"


@pytest.mark.parametrize("name", VOCABS)
def test_flush_of_unfinished_character_is_one_replacement(name: str) -> None:
    tok = tokenizer(name)
    byte = _byte_token_ids(tok)
    a = [tok.vocab["a"]]  # "a" itself, no SentencePiece space marker
    for tail in (b"\xe2", b"\xe2\x82", b"\xf0\x9f\x99", b"\xc3"):
        ids = a + [byte[b] for b in tail]
        det = IncrementalDetokenizer(tok)
        out = "".join(det.push(i) for i in ids)
        assert out == "a"
        assert det.pending_bytes == len(tail)
        end = det.flush()
        want = (b"a" + tail).decode("utf-8", errors="replace")
        assert want == "a\ufffd"
        assert out + end == want == tok.decode(ids)
        assert det.flush() == ""  # nothing left twice
    # an unfinished character interrupted mid-stream by ASCII: replaced at once, as decode does
    ids = [byte[0xE2], byte[0x82], tok.vocab["x"]]
    det = IncrementalDetokenizer(tok)
    out = [det.push(i) for i in ids]
    assert out[:2] == ["", ""] and out[2] == "\ufffdx"
    assert "".join(out) + det.flush() == tok.decode(ids) == b"\xe2\x82x".decode("utf-8", errors="replace")


@pytest.mark.parametrize("name", VOCABS)
def test_random_token_ids_concatenate_to_decode(name: str) -> None:
    """Random ids (many single-byte tokens, so invalid and partial UTF-8 abounds)."""
    tok = tokenizer(name)
    rng = random.Random(f"detok-{name}")
    byte_ids = list(_byte_token_ids(tok).values())
    special = [i for i, ty in enumerate(tok.types) if ty != 1]
    high = [i for b, i in _byte_token_ids(tok).items() if b >= 0x80]  # lead and continuation bytes
    n = len(tok)
    for _ in range(400):
        ids = []
        for _ in range(rng.randint(0, 16)):
            r = rng.random()
            pool = high if r < 0.35 else byte_ids if r < 0.5 else special if r < 0.55 else None
            ids.append(rng.choice(pool) if pool else rng.randrange(n))
        full = tok.decode(ids)
        det = IncrementalDetokenizer(tok)
        chunks = []
        for k, tid in enumerate(ids, 1):
            chunks.append(det.push(tid))
            joined = "".join(chunks)
            assert full.startswith(joined), ids
            # decoding the ids so far == the stream so far + replacements for the held bytes
            # (CPython's incremental decoder also holds ED A0..BF, a surrogate's start, so up to
            # one U+FFFD per held byte)
            assert 0 <= det.pending_bytes <= 3
            rest = tok.decode(ids[:k])
            assert rest.startswith(joined), ids[:k]
            rest = rest[len(joined) :]
            assert rest == "\ufffd" * len(rest), ids[:k]
            assert (1 if det.pending_bytes else 0) <= len(rest) <= det.pending_bytes, ids[:k]
        assert "".join(chunks) + det.flush() == full, ids


# --- StopMatcher ---------------------------------------------------------------------------


def test_a_continuation_keeps_its_leading_space() -> None:
    """SentencePiece: decode() drops the space the encoder adds before the first word, but a
    continuation after a prompt must keep its own ("Hello" + " world")."""
    tok = tokenizer("llama-spm")
    ids = tok.encode("Hello world", add_special=False)
    cont = IncrementalDetokenizer(tok, at_start=False)
    assert cont.push_many(ids[1:]) + cont.flush() == " world"
    whole = IncrementalDetokenizer(tok)
    assert whole.push_many(ids) + whole.flush() == tok.decode(ids) == "Hello world"


def naive_stop(text: str, stops: list[str]) -> tuple[str, int | None]:
    """Whole text, earliest occurrence of any stop string, cut there. Returns (kept, end of that match)."""
    best: tuple[int, int] | None = None  # (start, end of the shortest stop starting there)
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or (i, i + len(s)) < best):
            best = (i, i + len(s))
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def naive_held(text: str, stops: list[str]) -> int:
    """Longest suffix of ``text`` that is a proper prefix of some stop string."""
    for k in range(len(text), 0, -1):
        if any(len(s) > k and s.startswith(text[-k:]) for s in stops):
            return k
    return 0


def _random_split(rng: random.Random, text: str) -> list[str]:
    deltas, i = [], 0
    while i < len(text):
        k = rng.choice([0, 1, 1, 1, 2, 3, 5])
        deltas.append(text[i : i + k])
        i += k
    if rng.random() < 0.3:
        deltas.insert(rng.randint(0, len(deltas)), "")
    return deltas


ALPHABET = "aab\n"
FAVOURITES = ["ab", "aab", "\n\n", "a", "b\n", "aba", "\n", "abab"]


def _random_stops(rng: random.Random) -> list[str]:
    stops = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.4:
            stops.append(rng.choice(FAVOURITES))
        else:
            stops.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4))))
    return stops


def _nested(stops: list[str]) -> bool:
    """Whether some stop string occurs strictly inside another (touching neither end)."""
    return any(b != a and b in a[1:-1] for a in stops for b in stops)


def _run_matcher(stops: list[str], deltas: list[str]) -> tuple[str, int | None, StopMatcher]:
    """Feeds the deltas, checking the per-step invariants; returns (output, delta index of stop, matcher)."""
    m = StopMatcher(stops)
    real = [s for s in stops if s]
    out = ""
    fed = ""
    stopped_at = None
    for j, d in enumerate(deltas):
        before = m.released
        safe, stopped = m.feed(d)
        if stopped_at is not None:
            assert (safe, stopped) == ("", True)
            continue
        fed += d
        out += safe
        assert m.released >= before  # monotone: nothing taken back
        assert m.text[: m.released] == out
        assert not any(s in out for s in real), (stops, deltas, out)
        if stopped:
            stopped_at = j
            assert m.stopped in real
            assert m.text == out == m.text[: m.released]
            assert fed[len(out) :].startswith(m.stopped)
        else:
            assert m.stopped is None and m.text == fed
            # minimal hold-back
            assert m.released == len(fed) - naive_held(fed, real), (stops, deltas, fed, out)
    if stopped_at is None:
        out += m.flush()
        assert m.released == len(m.text)
    else:
        assert m.flush() == ""
    assert m.flush() == ""
    return out, stopped_at, m


def _delta_completing(deltas: list[str], end: int) -> int:
    n = 0
    for j, d in enumerate(deltas):
        n += len(d)
        if n >= end:
            return j
    raise AssertionError("match end past the text")


def test_stop_matcher_matches_naive_reference() -> None:
    """Random texts / stop sets / splits; stop sets where no stop lies strictly inside another
    (see ``test_nested_stop_completing_first_*`` for those)."""
    rng = random.Random(20240607)
    checked = stopped_runs = 0
    while checked < 3000:
        stops = _random_stops(rng)
        if _nested(stops):
            continue
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
        deltas = _random_split(rng, text)
        want, end = naive_stop(text, stops)
        got, stopped_at, m = _run_matcher(stops, deltas)
        assert got == want, (stops, deltas)
        if end is None:
            assert stopped_at is None and m.stopped is None
        else:
            assert stopped_at == _delta_completing(deltas, end), (stops, deltas)
            stopped_runs += 1
        checked += 1
    assert stopped_runs > 1000  # both outcomes well covered


def naive_streaming_stop(deltas: list[str], stops: list[str]) -> tuple[str, int | None]:
    """After every delta: the earliest occurrence of any stop in the text received so far."""
    text = ""
    for j, d in enumerate(deltas):
        text += d
        kept, end = naive_stop(text, stops)
        if end is not None:
            return kept, j
    return text, None


def test_stop_matcher_invariants_with_any_stop_sets() -> None:
    """With nested stop strings allowed: the invariants hold, and the result is the earliest
    occurrence in the text received so far (which is what the code implements)."""
    rng = random.Random(777)
    for _ in range(3000):
        stops = _random_stops(rng)
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
        deltas = _random_split(rng, text)
        got, stopped_at, _ = _run_matcher(stops, deltas)
        assert (got, stopped_at) == naive_streaming_stop(deltas, stops), (stops, deltas)


def test_nested_stop_split_dependence_current_behaviour() -> None:
    """Generation ends at the first token after which a stop string appears in the text so far
    (as vLLM and llama.cpp do: nothing is generated to see whether a longer stop would complete);
    the cut is at the earliest occurrence among those present then. So a shorter stop inside a
    longer one that started earlier cuts where it completes first."""
    stops = ["bc", "abcd"]
    assert _run_matcher(stops, ["xabcdy"])[:2] == ("x", 0)
    out, at, m = _run_matcher(stops, ["xabc", "dy"])
    assert (out, at, m.stopped) == ("xa", 0, "bc")
    out, at, m = _run_matcher(["aba", "b"], ["ab", "a"])
    assert (out, at, m.stopped) == ("a", 0, "b")
    out, at, m = _run_matcher(["aba", "b"], ["aba"])
    assert (out, at, m.stopped) == ("", 0, "aba")


def test_stop_matcher_edge_cases() -> None:
    # no stops (and empty stop strings are ignored): everything goes out at once
    for stops in ([], [""]):
        m = StopMatcher(stops)
        assert m.feed("ab") == ("ab", False)
        assert m.feed("") == ("", False)
        assert m.feed("\n") == ("\n", False)
        assert m.flush() == "" and m.stopped is None and m.text == "ab\n"

    # empty deltas change nothing
    m = StopMatcher(["ab"])
    assert m.feed("") == ("", False)
    assert m.feed("a") == ("", False)
    assert m.feed("") == ("", False) and m.released == 0 and m.text == "a"
    assert m.feed("a") == ("a", False)
    assert m.feed("b") == ("", True) and m.stopped == "ab" and m.text == "a"

    # stop at the very start, and stop equal to the whole text
    m = StopMatcher(["\n\n", "ab"])
    assert m.feed("ab") == ("", True)
    assert m.stopped == "ab" and m.text == "" and m.released == 0
    m = StopMatcher(["abba"])
    assert [m.feed(c) for c in "abba"] == [("", False)] * 3 + [("", True)]
    assert m.flush() == "" and m.text == ""

    # feeding after the stop returns ("", True) and keeps nothing
    m = StopMatcher(["b"])
    assert m.feed("aab") == ("aa", True)
    assert m.feed("ab") == ("", True) and m.feed("") == ("", True)
    assert m.text == "aa" and m.flush() == ""

    # text after the stop in the same delta is dropped
    m = StopMatcher(["\n\n"])
    assert m.feed("a\n") == ("a", False)
    assert m.feed("\nbb") == ("", True) and m.text == "a"

    # a held prefix that turns out not to be a stop is released (hold-back never overshoots)
    m = StopMatcher(["aab"])
    assert m.feed("aa") == ("", False)
    assert m.feed("a") == ("a", False)  # "aa" still held
    assert m.feed("\n") == ("aa\n", False)
    assert m.feed("a") == ("", False) and m.flush() == "a"

    # several stops complete in the same delta: the earliest start wins, not list order
    m = StopMatcher(["b\n", "aab", "ab"])
    assert m.feed("xaab\n") == ("x", True) and m.stopped == "aab"
    # a stop that is a prefix of another: the shorter completes first, same cut
    m = StopMatcher(["abab", "ab"])
    assert m.feed("a") == ("", False)
    assert m.feed("b") == ("", True) and m.stopped == "ab"
