"""Tests of the incremental JSON prefix recogniser, with Python's json module as the reference."""

from __future__ import annotations

import json
import random
import re

import pytest

from nlm_native.json_prefix import JsonPrefix

BIG_WS = 10**9  # max_whitespace that never triggers


class _Constant(ValueError):
    pass


def _no_constants(name: str) -> object:
    raise _Constant(name)


_FAIL = object()


def ref_loads(data: bytes) -> object:
    """json.loads as the reference: strict UTF-8, no NaN/Infinity; _FAIL when the document is invalid."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _FAIL
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError:  # JSONDecodeError and _Constant
        return _FAIL


def feed_chunks(state: JsonPrefix, data: bytes, rng: random.Random) -> tuple[JsonPrefix | None, list[int]]:
    """Advance by data in random chunks of 1..7 bytes; the final state (None if rejected) and the chunk ends."""
    ends: list[int] = []
    i = 0
    while i < len(data):
        j = min(len(data), i + rng.randint(1, 7))
        new = state.advance(data[i:j])
        if new is None:
            return None, ends
        state = new
        i = j
        ends.append(i)
    return state, ends


def feed_all(data: bytes, **kw: object) -> JsonPrefix | None:
    state: JsonPrefix | None = JsonPrefix(**kw)  # type: ignore[arg-type]
    for k in range(len(data)):
        state = state.advance(data[k : k + 1])
        if state is None:
            return None
    return state


def max_ws_run(data: bytes) -> int:
    """Longest whitespace run anywhere (an upper bound on the runs outside strings)."""
    runs = re.findall(rb"[ \t\n\r]+", data)
    return max((len(r) for r in runs), default=0)


# ---------------------------------------------------------------------------------------------------------------------
# Corpus of valid documents
# ---------------------------------------------------------------------------------------------------------------------

HAND_VALID_TEXT = [
    "{}",
    "{ }",
    ' {"a":1} ',
    '{"":""}',
    '{"a":{}}',
    '{"a":[]}',
    '{"a":[[]]}',
    '{"a":[{}]}',
    '{"a":[[[[[[[[[[1]]]]]]]]]]}',
    '{"a":{"b":{"c":{"d":{"e":{}}}}}}',
    '{"a":[1,2,3],"b":{"c":[true,false,null]},"d":"x"}',
    '{"t":true,"f":false,"n":null}',
    '{"esc":"\\" \\\\ \\/ \\b \\f \\n \\r \\t"}',
    '{"u":"\\u0000\\u001f\\u0041\\u00e9\\u4e2d\\uFFFF\\uabcd\\uABCD"}',
    '{"pair":"\\ud83d\\ude00","lone":"\\ud800"}',
    '{"\\"key\\"":"\\\\"}',
    '{"cjk":"中文字符","jp":"日本語","ko":"한국어"}',
    '{"emoji":"😀🎉👍🏽🇯🇵","max":"\U0010ffff","bmp_edge":"\ud7ff\ue000\uffff\u0800\u07ff\u0080"}',
    '{"mixed":"a中b😀c\\n\\u00e9"}',
    '{"del":"\x7f","sp":" "}',
    '{"n":0}',
    '{"n":-0}',
    '{"n":0.0}',
    '{"n":-0.5}',
    '{"n":123}',
    '{"n":-123}',
    '{"n":1.25}',
    '{"n":1e5}',
    '{"n":1E5}',
    '{"n":1e+5}',
    '{"n":1e-5}',
    '{"n":1.5e-300}',
    '{"n":-1.5E+300}',
    '{"n":0e0}',
    '{"n":0E-0}',
    '{"n":10.01}',
    '{"n":123456789012345678901234567890}',
    '{"nums":[0,-0,1,-1,0.5,-0.5,1e1,1E1,1e+1,1e-1,1.0e1,10,100,9.99]}',
    '{"a" : 1 , "b" : [ 1 , 2 ] }',
    '{\n\t"a": [\r\n  1,\n  2\n ],\r "b":\t{}\n}',
    '{"a":1}\n',
    '{"a":1}' + " " * 32,
    " " * 32 + '{"a":1}',
    '{"a":"' + "x" * 200 + '"}',
    '{"dup":1,"dup":2}',
]

HAND_VALID_NON_OBJECT = [
    "[]",
    "[1,2]",
    '"s"',
    '"中😀"',
    "true",
    "false",
    "null",
    "0",
    "-1.5e3",
    " 12 ",
    "[[],{}]",
    '[{"a":[{"b":null}]}]',
]

PRETTY = {
    "name": "Widget",
    "tags": ["a", "b", "中文"],
    "dims": {"w": 1.5, "h": -2, "deep": [[1, [2, [3]]], {"x": {"y": {}}}]},
    "ok": True,
    "none": None,
    "empty_list": [],
    "empty_obj": {},
    "text": 'line1\nline2\t"quoted" \\ / 😀',
}


def _pretty_docs() -> list[bytes]:
    out = []
    for indent in (None, 0, 1, 2, 4, "\t"):
        for ensure_ascii in (True, False):
            out.append(json.dumps(PRETTY, indent=indent, ensure_ascii=ensure_ascii).encode())
    return out


_CHAR_POOL = list("abcXYZ019 _-.,:{}[]") + [
    '"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\x80", "\xff",
    "é", "ß", "ñ", "\u07ff", "\u0800", "中", "文", "日", "本", "한", "\ud7ff", "\ue000", "\uffff",
    "😀", "🎉", "👍🏽", "\U0010ffff", "\u2028",
]  # fmt: skip


def _rand_str(rng: random.Random) -> str:
    return "".join(rng.choice(_CHAR_POOL) for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 12))))


def _rand_number(rng: random.Random) -> int | float:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randint(-10, 10)
    if kind == 1:
        return rng.randint(-(10**25), 10**25)
    if kind == 2:
        return rng.uniform(-1000, 1000)
    if kind == 3:
        return rng.random() * 10.0 ** rng.randint(-320, 300) * rng.choice((1, -1))  # 1e-05, 1.5e+300, ...
    if kind == 4:
        return float(rng.randint(-5, 5))  # 0.0, -3.0
    return rng.choice((0, -0.0, 0.5, 1e16, 1.7976931348623157e308, 5e-324))


def _rand_value(rng: random.Random, depth: int) -> object:
    r = rng.random()
    if depth >= 5 or r < 0.45:
        k = rng.randrange(4)
        if k == 0:
            return _rand_str(rng)
        if k == 1:
            return _rand_number(rng)
        return rng.choice((True, False, None))
    if r < 0.72:
        return [_rand_value(rng, depth + 1) for _ in range(rng.choice((0, 1, 2, 3, 5)))]
    return _rand_object(rng, depth + 1)


def _rand_object(rng: random.Random, depth: int) -> dict[str, object]:
    return {_rand_str(rng): _rand_value(rng, depth) for _ in range(rng.choice((0, 1, 2, 3, 4)))}


_SEPARATORS = (None, (",", ":"), (", ", ": "), (" , ", " : "), ("\n,", ":\t"))


def _rand_dump(rng: random.Random, value: object) -> bytes:
    indent = rng.choice((None, None, 0, 1, 2, 4, "\t", "   "))
    text = json.dumps(value, indent=indent, ensure_ascii=rng.random() < 0.5, separators=rng.choice(_SEPARATORS))
    lead = " " * rng.choice((0, 0, 0, 1, 3))
    trail = rng.choice(("", "", "", "\n", " \r\n\t"))
    return (lead + text + trail).encode("utf-8")


def random_objects(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [_rand_dump(rng, _rand_object(rng, 0)) for _ in range(n)]


def random_values(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [_rand_dump(rng, _rand_value(rng, 0)) for _ in range(n)]


VALID_OBJECTS = [t.encode() for t in HAND_VALID_TEXT] + _pretty_docs()
VALID_NON_OBJECTS = [t.encode() for t in HAND_VALID_NON_OBJECT]
RANDOM_OBJECTS = random_objects(400, seed=1234)
RANDOM_VALUES = random_values(200, seed=4321)


def test_corpus_is_valid() -> None:
    for doc in VALID_OBJECTS + RANDOM_OBJECTS:
        assert isinstance(ref_loads(doc), dict), doc
        assert max_ws_run(doc) <= 32, doc
    for doc in VALID_NON_OBJECTS + RANDOM_VALUES:
        assert ref_loads(doc) is not _FAIL, doc
    # The random corpus exercises what it is meant to.
    blob = b"".join(RANDOM_OBJECTS)
    for needle in (b"\\u", b"\\n", b'\\"', b"\xf0\x9f", b"\xe4\xb8", b"e-", b"e+", b"\n    ", b"\t", b"[]", b"{}"):
        assert needle in blob, needle


# ---------------------------------------------------------------------------------------------------------------------
# Every prefix of a valid document is accepted
# ---------------------------------------------------------------------------------------------------------------------


def _value_end(doc: bytes) -> int:
    return len(doc.rstrip(b" \t\r\n"))


@pytest.mark.parametrize("doc", VALID_OBJECTS, ids=range(len(VALID_OBJECTS)))
def test_valid_object_every_byte_prefix(doc: bytes) -> None:
    end = _value_end(doc)
    state = JsonPrefix()
    for k in range(len(doc)):
        state = state.advance(doc[k : k + 1])
        assert state is not None, (doc, k, doc[: k + 1])
        assert state.complete == (k + 1 >= end), (doc, k)
    assert state.complete and state.depth == 0


def test_random_objects_in_chunks() -> None:
    rng = random.Random(99)
    for doc in VALID_OBJECTS + RANDOM_OBJECTS:
        end = _value_end(doc)
        for tlo in (True, False):
            state = JsonPrefix(top_level_object=tlo)
            i = 0
            while i < len(doc):
                j = min(len(doc), i + rng.randint(1, 7))
                state = state.advance(doc[i:j])
                assert state is not None, (doc, i, j)
                assert state.complete == (j >= end), (doc, j)
                i = j
            assert state.complete and state.depth == 0


def test_valid_non_objects() -> None:
    rng = random.Random(7)
    for doc in VALID_NON_OBJECTS + RANDOM_VALUES:
        final, _ = feed_chunks(JsonPrefix(top_level_object=False), doc, rng)
        assert final is not None and final.complete and final.depth == 0, doc
        is_obj = isinstance(ref_loads(doc), dict)
        final, _ = feed_chunks(JsonPrefix(top_level_object=True), doc, rng)
        # With top_level_object=True the state is complete iff the document is an object; others are rejected.
        assert (final is not None and final.complete) == is_obj, doc
        assert (final is None) == (not is_obj), doc


def test_top_level_object_rejects_other_values_at_first_byte() -> None:
    start = JsonPrefix().advance(b"  ")
    assert start is not None
    for b in b'["tfn-0123456789]}':
        assert start.advance(bytes([b])) is None, chr(b)
    assert start.advance(b"{") is not None


# ---------------------------------------------------------------------------------------------------------------------
# Invalid documents are rejected
# ---------------------------------------------------------------------------------------------------------------------

HAND_INVALID = [
    b'{"a":1,}',
    b'{"a":[1,2,]}',
    b"{'a':1}",
    b"{\"a\":'x'}",
    b"{a:1}",
    b'{"a":01}',
    b'{"a":-01}',
    b'{"a":00}',
    b'{"a":1.}',
    b'{"a":1.e5}',
    b'{"a":.5}',
    b'{"a":+1}',
    b'{"a":-}',
    b'{"a":--1}',
    b'{"a":1e}',
    b'{"a":1e+}',
    b'{"a":1e5.5}',
    b'{"a":1.5.5}',
    b'{"a":0x10}',
    b'{"a":1-2}',
    b'{"a":"\\x"}',
    b'{"a":"\\U0041"}',
    b'{"a":"\\u12G4"}',
    b'{"a":"\\u00"}',
    b'{"a":"\\\'"}',
    b'{"a":"line\nbreak"}',
    b'{"a":"tab\there"}',
    b'{"a":"nul\x00"}',
    b'{"a":trux}',
    b'{"a":tru}',
    b'{"a":nul}',
    b'{"a":True}',
    b'{"a":nulll}',
    b'{"a":true1}',
    b"}",
    b"]",
    b"{]",
    b"[}",
    b'{"a":[1}',
    b'{"a":{]}',
    b"{} {}",
    b"{}{}",
    b"{},",
    b"{}x",
    b"[1] [2]",
    b"1 2",
    b'"a" "b"',
    b'{"a":"\x80"}',
    b'{"a":"x\xbfy"}',
    b'{"a":"\xc0\xaf"}',
    b'{"a":"\xc1\xbf"}',
    b'{"a":"\xf5\x80\x80\x80"}',
    b'{"a":"\xff"}',
    b'{"a":"\xe4\xb8"}',
    b'{"a":"\xe4"}',
    b'{"a":"\xe0\x80\x80"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xf0\x80\x80\x80"}',
    b'{"a":"\xf4\x90\x80\x80"}',
    b'{"\xc3":1}',
    b'{"a":1}\xc3\xa9',
    b"\xef\xbb\xbf{}",
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":-Infinity}',
    b"NaN",
    b'{"a":1 // c\n}',
    b'{"a":1 /* c */}',
    b'// c\n{"a":1}',
    b'{"a" 1}',
    b'{"a"::1}',
    b'{"a":1 "b":2}',
    b"{,}",
    b"[,]",
    b"[1,,2]",
    b'{"a":}',
    b'{"a"}',
    b'{"a",1}',
    b"[1 2]",
    b"{1:2}",
    b'{"a":[1:2]}',
    b'{"a":\x00}',
    b"{\x0b}",
    b"{\xa0}",
]


@pytest.mark.parametrize("doc", HAND_INVALID, ids=range(len(HAND_INVALID)))
def test_invalid_rejected(doc: bytes) -> None:
    assert ref_loads(doc) is _FAIL
    rng = random.Random(len(doc))
    for tlo in (True, False):
        assert feed_all(doc, top_level_object=tlo) is None, (doc, tlo)
        final, _ = feed_chunks(JsonPrefix(top_level_object=tlo), doc, rng)
        assert final is None, (doc, tlo)


def test_rejection_point_is_the_offending_byte() -> None:
    cases = {
        b'{"a":1,}': 7,
        b'{"a":01': 6,
        b'{"a":"\\x': 7,
        b'{"a":"\\u12G': 10,
        b'{"a":trux': 8,
        b'{"a":"\xe4\xb8"': 8,
        b"{}x": 2,
    }
    for doc, bad in cases.items():
        state = JsonPrefix()
        for k in range(len(doc)):
            state = state.advance(doc[k : k + 1])
            if k < bad:
                assert state is not None, (doc, k)
            else:
                assert state is None, (doc, k)
                break


def test_incomplete_documents_are_prefixes_not_complete() -> None:
    for doc in (b"", b"{", b'{"a"', b'{"a":', b'{"a":1', b'{"a":1.', b'{"a":1e', b'{"a":"\\u12', b'{"a":tr',
                b'{"a":"\xf0\x9f', b'{"a":[', b'{"a":[1,', b'{"a":{"b":[]}'):  # fmt: skip
        state = feed_all(doc)
        assert state is not None and not state.complete, doc
        assert ref_loads(doc) is _FAIL


# ---------------------------------------------------------------------------------------------------------------------
# Fuzz: mutants of valid documents agree with json.loads
# ---------------------------------------------------------------------------------------------------------------------

_INTERESTING = b'{}[]:,"\\ \n\t0123456789.-+eEtrufalsn/ux\x00\x1f\x7f\x80\xbf\xc0\xc3\xe4\xed\xf0\xf4\xf5\xff'


def _mutate(rng: random.Random, doc: bytes) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(3)
        pos = rng.randrange(len(doc) + (op == 0))
        byte = bytes([rng.choice(_INTERESTING) if rng.random() < 0.7 else rng.randrange(256)])
        if op == 0:
            doc = doc[:pos] + byte + doc[pos:]
        elif op == 1:
            doc = doc[:pos] + doc[pos + 1 :]
        else:
            doc = doc[:pos] + byte + doc[pos + 1 :]
        if not doc:
            break
    return doc


def test_fuzz_mutants_agree_with_json() -> None:
    rng = random.Random(2024)
    sources = [d for d in VALID_OBJECTS + RANDOM_OBJECTS if len(d) < 400]
    accepted_valid = rejected = 0
    for _ in range(6000):
        m = _mutate(rng, rng.choice(sources))
        ref = ref_loads(m)
        for tlo in (True, False):
            final, _ = feed_chunks(JsonPrefix(top_level_object=tlo, max_whitespace=BIG_WS), m, rng)
            ours = final is not None and final.complete
            theirs = ref is not _FAIL and (isinstance(ref, dict) or not tlo)
            assert ours == theirs, (m, tlo, ref if ref is not _FAIL else "invalid")
            if final is not None and final.complete:
                assert final.depth == 0
        if ref is _FAIL:
            rejected += 1
        else:
            accepted_valid += 1
    assert accepted_valid > 300 and rejected > 3000  # both sides are exercised


def test_fuzz_accepted_prefixes_can_be_completed() -> None:
    """Soundness of acceptance: the longest accepted prefix of a mutant (and random prefixes of it) can always be
    completed to a document that json.loads accepts, so the sampler can never be led into a dead end."""
    rng = random.Random(77)
    sources = [d for d in RANDOM_OBJECTS if len(d) < 300]
    for _ in range(1500):
        m = _mutate(rng, rng.choice(sources))
        tlo = rng.random() < 0.7
        state = JsonPrefix(top_level_object=tlo, max_whitespace=BIG_WS)
        accepted = [state]
        for k in range(len(m)):
            nxt = accepted[-1].advance(m[k : k + 1])
            if nxt is None:
                break
            accepted.append(nxt)
        for k in {len(accepted) - 1, rng.randrange(len(accepted))}:
            completion = _complete_from(accepted[k])
            assert completion is not None, (m[:k], tlo)
            ref = ref_loads(m[:k] + completion)
            assert ref is not _FAIL and (isinstance(ref, dict) or not tlo), (m[:k], completion)


_COMPLETION_STEPS = (b'"', b"}", b"]", b"0", b":", b"\x80", b"\xa0", b"\x90", b"r", b"u", b"e", b"l", b"s", b"a", b"{")


def _complete_from(state: JsonPrefix) -> bytes | None:
    """Greedily complete an accepted prefix one byte at a time (first acceptable byte of _COMPLETION_STEPS)."""
    suffix = b""
    for _ in range(300):
        if state.complete:
            return suffix
        for step in _COMPLETION_STEPS:
            nxt = state.advance(step)
            if nxt is not None:
                state, suffix = nxt, suffix + step
                break
        else:
            return None
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Immutability, whitespace, UTF-8 details, depth
# ---------------------------------------------------------------------------------------------------------------------


def test_immutable_branching() -> None:
    s = JsonPrefix().advance(b'{"a": ')
    assert s is not None
    before = repr(s)
    s1 = s.advance(b"12")
    s2 = s.advance(b'"x')
    s3 = s.advance(b"}")
    s4 = s.advance(b"[")
    assert s3 is None
    assert s1 is not None and s2 is not None and s4 is not None
    assert repr(s) == before
    assert s.depth == 1 and s4.depth == 2 and s1.depth == 1
    # Each branch continues independently.
    assert s1.advance(b'"') is None and s2.advance(b'"}') is not None
    assert s1.advance(b"}").complete  # type: ignore[union-attr]
    assert s2.advance(b"}") is not None and not s2.advance(b"}").complete  # type: ignore[union-attr]
    assert s4.advance(b"]}").complete  # type: ignore[union-attr]
    again = s.advance(b"12")
    assert again is not None and repr(again) == repr(s1)
    assert repr(s) == before
    # A partial UTF-8 character branches too.
    u = JsonPrefix().advance(b'{"a":"\xf0\x9f')
    assert u is not None
    assert u.advance(b"\x98\x80") is not None and u.advance(b"\x98") is not None
    assert u.advance(b'"') is None and u.advance(b"\x98\x80\x80") is None
    assert u.advance(b"\x98\x80").advance(b'"}').complete  # type: ignore[union-attr]
    assert JsonPrefix().advance(b"") is not None


def test_max_whitespace() -> None:
    for n in (0, 1, 5, 32):
        ok = JsonPrefix(max_whitespace=n)
        assert ok.advance(b" " * n + b"{") is not None
        assert ok.advance(b" " * (n + 1) + b"{") is None
        assert ok.advance(b"{" + b"\n" * n + b'"a"' + b"\t" * n + b":" + b"\r" * n + b"1" + b" " * n + b"}") is not None
        assert ok.advance(b"{" + b"\n" * (n + 1)) is None
        assert ok.advance(b'{"a":1' + b" " * (n + 1)) is None  # whitespace after a number
        assert ok.advance(b'{"a":[' + b" \n" * n + b" ") is None if n else True
        done = ok.advance(b"{}")
        assert done is not None and done.complete
        assert done.advance(b" " * n) is not None
        assert done.advance(b" " * (n + 1)) is None
    # The default is 32, runs are counted across calls, and a non-whitespace byte resets the count.
    s = JsonPrefix()
    for _ in range(32):
        s = s.advance(b" ")
        assert s is not None
    assert s.advance(b" ") is None
    s = s.advance(b"{")
    assert s is not None and s.advance(b" " * 32) is not None and s.advance(b" " * 33) is None
    s = s.advance(b" " * 20 + b'"k"' + b" " * 20)
    assert s is not None
    # Whitespace inside strings is not limited.
    assert JsonPrefix().advance(b'{"a":"' + b" " * 1000 + b'"}') is not None
    with pytest.raises(ValueError):
        JsonPrefix(max_whitespace=-1)


def test_utf8_split_and_classes() -> None:
    text = "é中😀\U0010ffff\u0800\ud7ff\ue000"
    doc = ('{"s":"' + text + '"}').encode()
    state: JsonPrefix | None = JsonPrefix()
    for k in range(len(doc)):
        state = state.advance(doc[k : k + 1])
        assert state is not None
    assert state.complete
    base = JsonPrefix().advance(b'{"s":"')
    assert base is not None
    for bad in (b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xf5", b"\xf8", b"\xfe", b"\xff", b"\xc3\xc3", b"\xc3A",
                b"\xe0\x9f", b"\xed\xa0", b"\xf0\x8f", b"\xf4\x90", b"\xe4\xb8A", b"\xf0\x9f\x98A"):  # fmt: skip
        assert base.advance(bad) is None, bad
    for good in (b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf0\x90\x80\x80",
                 b"\xf4\x8f\xbf\xbf", b"\x7f"):  # fmt: skip
        assert base.advance(good) is not None, good
        assert (good + b'"').decode("utf-8")
    # Non-ASCII is never allowed outside strings.
    for b in range(0x80, 0x100):
        assert JsonPrefix().advance(b"{" + bytes([b])) is None
        assert JsonPrefix(top_level_object=False).advance(bytes([b])) is None


def test_every_single_byte_in_string_matches_json() -> None:
    base = JsonPrefix().advance(b'{"s":"')
    assert base is not None
    for b in range(256):
        doc = b'{"s":"' + bytes([b]) + b'"}'
        ours = base.advance(bytes([b]) + b'"}')
        assert (ours is not None and ours.complete) == (ref_loads(doc) is not _FAIL), b


def test_depth_and_literals() -> None:
    s = JsonPrefix(top_level_object=False)
    depths = []
    for ch in b'[{"a":[[],{"b":[1]}]}]':
        s = s.advance(bytes([ch]))
        assert s is not None
        depths.append(s.depth)
    assert depths[:3] == [1, 2, 2] and depths[-1] == 0 and max(depths) == 5 and s.complete
    s = JsonPrefix().advance(b'{"a":')
    assert s is not None
    for lit in (b"true", b"false", b"null"):
        for k in range(1, len(lit)):
            part = s.advance(lit[:k])
            assert part is not None and not part.complete
            assert part.advance(lit[k:] + b"}").complete  # type: ignore[union-attr]
        assert s.advance(lit + b"x") is None
    t = JsonPrefix(top_level_object=False)
    assert t.advance(b"tru") is not None and not t.advance(b"tru").complete  # type: ignore[union-attr]
    assert t.advance(b"true").complete and t.advance(b"-").complete is False  # type: ignore[union-attr]
    assert t.advance(b"12").complete and not t.advance(b"1.").complete  # type: ignore[union-attr]
