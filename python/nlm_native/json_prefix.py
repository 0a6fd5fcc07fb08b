"""Incremental, byte-level recogniser of JSON (RFC 8259) prefixes, for constrained decoding.

A sampler that must produce JSON (``response_format={"type": "json_object"}``) keeps one :class:`JsonPrefix`
state for the text generated so far.  At each step it asks, for every candidate token, ``state.advance(token_bytes)``:
``None`` means that appending those bytes makes the output something that no longer is a prefix of any valid JSON
document, so the token is masked; otherwise the result is the state after the token.  States are immutable, so many
candidates can be tried from the same state, and a state is cheap to keep.

The recogniser works on UTF-8 bytes: bytes >= 0x80 are accepted only inside strings, where UTF-8 well-formedness is
checked incrementally (no stray continuation bytes, no invalid lead bytes, no overlong forms, no UTF-16 surrogates,
nothing above U+10FFFF); a multi-byte character may be split across calls.  Numbers follow the RFC grammar
``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?``; ``NaN``, ``Infinity``, comments, single quotes, trailing commas
and raw control characters in strings are rejected.  Runs of whitespace outside strings are limited to
``max_whitespace`` bytes so that a sampler cannot loop forever on newlines; once a whole top-level value has been read
(:attr:`JsonPrefix.complete`) only that much trailing whitespace may follow.
"""

from __future__ import annotations

__all__ = ["JsonPrefix"]

# Modes.  Structural modes (outside strings and numbers):
_START = 0  # before the top-level value
_VALUE = 1  # a value is required (after ':' or after ',' in an array)
_VALUE_OR_CLOSE = 2  # after '[': a value or ']'
_KEY_OR_CLOSE = 3  # after '{': a key string or '}'
_KEY = 4  # after ',' in an object: a key string
_COLON = 5  # after a key: ':'
_AFTER = 6  # after a value inside a container: ',' or the closing bracket
_DONE = 7  # the top-level value is complete: only whitespace may follow
# Inside a string:
_STR = 8
_ESC = 9  # after a backslash
_HEX = 10  # inside \uXXXX, _a hex digits still to come
_UTF8 = 11  # inside a multi-byte UTF-8 character, _a continuation bytes still to come, next one in [_lo, _hi]
# Inside a literal (true/false/null): _lit holds the bytes still to come.
_LIT = 12
# Inside a number (all modes >= _N_MINUS):
_N_MINUS = 13  # after '-'
_N_ZERO = 14  # integer part is '0'            (may end here)
_N_INT = 15  # in integer part [1-9][0-9]*     (may end here)
_N_DOT = 16  # after '.'
_N_FRAC = 17  # in fraction digits             (may end here)
_N_E = 18  # after 'e' / 'E'
_N_ESIGN = 19  # after the exponent sign
_N_EXP = 20  # in exponent digits              (may end here)

_NUM_END_OK = frozenset((_N_ZERO, _N_INT, _N_FRAC, _N_EXP))
_MODE_NAMES = (
    "START VALUE VALUE_OR_CLOSE KEY_OR_CLOSE KEY COLON AFTER DONE STR ESC HEX UTF8 LIT "
    "N_MINUS N_ZERO N_INT N_DOT N_FRAC N_E N_ESIGN N_EXP"
).split()

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_LITERALS = {0x74: b"rue", 0x66: b"alse", 0x6E: b"ull"}  # t, f, n -> the rest of the literal


def _utf8_lead(b: int) -> tuple[int, int, int] | None:
    """(continuation bytes to come, range of the first one) for a UTF-8 lead byte >= 0x80, None if invalid."""
    if b < 0xC2:  # stray continuation byte (0x80..0xBF) or overlong lead (0xC0, 0xC1)
        return None
    if b < 0xE0:
        return 1, 0x80, 0xBF
    if b < 0xF0:
        if b == 0xE0:
            return 2, 0xA0, 0xBF  # no overlong 3-byte forms
        if b == 0xED:
            return 2, 0x80, 0x9F  # no UTF-16 surrogates
        return 2, 0x80, 0xBF
    if b < 0xF5:
        if b == 0xF0:
            return 3, 0x90, 0xBF  # no overlong 4-byte forms
        if b == 0xF4:
            return 3, 0x80, 0x8F  # nothing above U+10FFFF
        return 3, 0x80, 0xBF
    return None


_UTF8_LEAD = tuple(_utf8_lead(b) if b >= 0x80 else None for b in range(256))


class JsonPrefix:
    """Immutable state of a JSON recogniser; advance() returns a new state or None."""

    __slots__ = ("_stack", "_mode", "_key", "_a", "_lo", "_hi", "_lit", "_ws", "_tlo", "_maxws")

    _stack: str  # open containers, innermost last: '{' or '['
    _mode: int
    _key: bool  # the string being read is an object key
    _a: int  # _HEX / _UTF8: how many bytes are still to come
    _lo: int  # _UTF8: allowed range of the next continuation byte
    _hi: int
    _lit: bytes  # _LIT: the rest of the literal
    _ws: int  # length of the current run of whitespace outside strings
    _tlo: bool
    _maxws: int

    def __init__(self, *, top_level_object: bool = True, max_whitespace: int = 32) -> None:
        if max_whitespace < 0:
            raise ValueError("max_whitespace must be >= 0")
        self._stack = ""
        self._mode = _START
        self._key = False
        self._a = 0
        self._lo = 0
        self._hi = 0
        self._lit = b""
        self._ws = 0
        self._tlo = bool(top_level_object)
        self._maxws = int(max_whitespace)

    @property
    def complete(self) -> bool:
        """A whole top-level value has been read (only whitespace may follow)."""
        mode = self._mode
        return mode == _DONE or (not self._stack and mode in _NUM_END_OK)

    @property
    def depth(self) -> int:
        """Nesting depth of open containers."""
        return len(self._stack)

    def __repr__(self) -> str:
        return (
            f"JsonPrefix(mode={_MODE_NAMES[self._mode]}, stack={self._stack!r}, key={self._key}, a={self._a}, "
            f"lit={self._lit!r}, ws={self._ws}, top_level_object={self._tlo}, max_whitespace={self._maxws})"
        )

    def advance(self, data: bytes) -> JsonPrefix | None:
        """The state after appending ``data``, or None if the text would no longer be a prefix of valid JSON."""
        if not data:
            return self
        stack = self._stack
        mode = self._mode
        key = self._key
        a = self._a
        lo = self._lo
        hi = self._hi
        lit = self._lit
        ws = self._ws
        maxws = self._maxws

        for b in data:
            # ---- inside a string (the common case while generating) ----
            if mode == _STR:
                if b == 0x22:  # closing quote
                    if key:
                        mode = _COLON
                    else:
                        mode = _AFTER if stack else _DONE
                elif b == 0x5C:
                    mode = _ESC
                elif b < 0x20:
                    return None  # raw control character
                elif b >= 0x80:
                    lead = _UTF8_LEAD[b]
                    if lead is None:
                        return None
                    a, lo, hi = lead
                    mode = _UTF8
                continue
            if mode == _UTF8:
                if b < lo or b > hi:
                    return None
                a -= 1
                if a:
                    lo = 0x80
                    hi = 0xBF
                else:
                    mode = _STR
                continue
            if mode == _ESC:
                if b in _SIMPLE_ESCAPES:
                    mode = _STR
                elif b == 0x75:  # \u
                    mode = _HEX
                    a = 4
                else:
                    return None
                continue
            if mode == _HEX:
                if b not in _HEXDIGITS:
                    return None
                a -= 1
                if not a:
                    mode = _STR
                continue
            # ---- inside a literal ----
            if mode == _LIT:
                if b != lit[0]:
                    return None
                lit = lit[1:]
                if not lit:
                    mode = _AFTER if stack else _DONE
                continue
            # ---- inside a number ----
            if mode >= _N_MINUS:
                if b in _DIGITS:
                    if mode == _N_MINUS:
                        mode = _N_ZERO if b == 0x30 else _N_INT
                    elif mode == _N_ZERO:
                        return None  # leading zero
                    elif mode == _N_DOT:
                        mode = _N_FRAC
                    elif mode == _N_E or mode == _N_ESIGN:
                        mode = _N_EXP
                    # _N_INT, _N_FRAC, _N_EXP: stay
                    continue
                if b == 0x2E:  # '.'
                    if mode == _N_ZERO or mode == _N_INT:
                        mode = _N_DOT
                        continue
                    return None
                if b == 0x65 or b == 0x45:  # 'e' / 'E'
                    if mode == _N_ZERO or mode == _N_INT or mode == _N_FRAC:
                        mode = _N_E
                        continue
                    return None
                if b == 0x2B or b == 0x2D:  # '+' / '-'
                    if mode == _N_E:
                        mode = _N_ESIGN
                        continue
                    return None
                if mode not in _NUM_END_OK:
                    return None
                # The number ended; this byte is a delimiter, handled below.
                mode = _AFTER if stack else _DONE
            # ---- structural ----
            if b in _WS:
                ws += 1
                if ws > maxws:
                    return None
                continue
            ws = 0
            if mode == _AFTER:
                if b == 0x2C:  # ','
                    mode = _KEY if stack[-1] == "{" else _VALUE
                elif b == (0x7D if stack[-1] == "{" else 0x5D):  # the matching '}' / ']'
                    stack = stack[:-1]
                    mode = _AFTER if stack else _DONE
                else:
                    return None
            elif mode == _COLON:
                if b != 0x3A:
                    return None
                mode = _VALUE
            elif mode == _KEY_OR_CLOSE or mode == _KEY:
                if b == 0x22:
                    mode = _STR
                    key = True
                elif b == 0x7D and mode == _KEY_OR_CLOSE:
                    stack = stack[:-1]
                    mode = _AFTER if stack else _DONE
                else:
                    return None
            elif mode == _DONE:
                return None
            else:  # _START, _VALUE, _VALUE_OR_CLOSE: a value starts here
                if b == 0x7B:  # '{'
                    stack += "{"
                    mode = _KEY_OR_CLOSE
                elif mode == _START and self._tlo:
                    return None
                elif b == 0x22:
                    mode = _STR
                    key = False
                elif b == 0x5B:  # '['
                    stack += "["
                    mode = _VALUE_OR_CLOSE
                elif b == 0x5D and mode == _VALUE_OR_CLOSE:
                    stack = stack[:-1]
                    mode = _AFTER if stack else _DONE
                elif b in _DIGITS:
                    mode = _N_ZERO if b == 0x30 else _N_INT
                elif b == 0x2D:
                    mode = _N_MINUS
                else:
                    rest = _LITERALS.get(b)
                    if rest is None:
                        return None
                    mode = _LIT
                    lit = rest

        new = JsonPrefix.__new__(JsonPrefix)
        new._stack = stack
        new._mode = mode
        new._key = key
        new._a = a
        new._lo = lo
        new._hi = hi
        new._lit = lit
        new._ws = ws
        new._tlo = self._tlo
        new._maxws = maxws
        return new
