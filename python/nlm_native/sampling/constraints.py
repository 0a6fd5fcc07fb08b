"""Structured output through llguidance: a :class:`~nlm_native.sampling.params.Grammar` compiled
against the model's vocabulary, and one matcher per sample that masks the tokens the grammar
forbids at every step.

llguidance (Microsoft's, on PyPI, no dependencies) computes a token mask for a 152K vocabulary in
tens of microseconds from a lexer/parser state, and handles JSON Schema (``json_schema``, strict),
any JSON object (``json_object``), Lark-style context-free grammars and regular expressions.
Control tokens are offered to it as special tokens (``\\xff`` + text, as its llama.cpp bridge does),
so grammars can name them (``<|im_end|>``) and plain text can never produce them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.numpy as llnp
import numpy as np

from ..core import ops
from ..text.tokenizer import TOKEN_CONTROL, TOKEN_USER_DEFINED, Tokenizer
from .params import Grammar

_LOG_SILENT = 0


class _Vocab:
    """What llguidance's TokenizerWrapper reads: token bytes, eos/bos, special ids, and an encoder."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int) -> None:
        tokens: list[bytes] = []
        special: list[int] = []
        for i in range(n_vocab):
            if i >= len(tokenizer):
                tokens.append(b"")  # padding rows of the output matrix: never allowed
                continue
            t, ty = tokenizer.tokens[i], tokenizer.types[i]
            if ty == TOKEN_CONTROL or (ty == TOKEN_USER_DEFINED and t.startswith("<") and t.endswith(">")):
                tokens.append(b"\xff" + t.encode("utf-8"))
                special.append(i)
            else:
                tokens.append(tokenizer.token_bytes(i))
        self.tokens = tokens
        self.special_token_ids = special
        eos = tokenizer.eos_id
        self.eos_token_id = eos if eos is not None else min(tokenizer.end_of_generation_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        self._tok = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tok.encode(text)


class GrammarCompiler:
    """Compiles grammars for one model's vocabulary (building the vocabulary index takes ~1 s: keep one)."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        eog = sorted(tokenizer.end_of_generation_ids) or None
        self.lltokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab(tokenizer, n_vocab)),
                                                  n_vocab=n_vocab, eos_token=eog)

    @staticmethod
    def source(grammar: Grammar) -> str:
        """The llguidance grammar text for ``grammar``."""
        if grammar.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
        if grammar.kind == "json_schema":
            try:
                schema: Any = json.loads(grammar.source)
            except json.JSONDecodeError as e:
                raise ValueError(f"the JSON schema is not JSON: {e}") from None
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            except ValueError as e:
                raise ValueError(f"bad JSON schema: {e}") from None
        if grammar.kind == "lark":  # Lark as llguidance reads it, or llama.cpp's GBNF (converted)
            try:
                return llguidance.grammar_from("grammar", grammar.source)
            except ValueError as e:
                raise ValueError(f"bad grammar: {e}") from None
        return llguidance.LLMatcher.grammar_from_regex(grammar.source)

    def compile(self, grammar: Grammar) -> Callable[[], Constraint]:
        """Check ``grammar`` against the vocabulary (``ValueError`` saying what is wrong) and return a
        factory of fresh matchers, one per sample."""
        text = self.source(grammar)
        err = llguidance.LLMatcher.validate_grammar(text, self.lltokenizer)
        if err and not err.startswith("WARNING"):
            raise ValueError(f"bad {grammar.kind.replace('_', ' ')} grammar: {err}")
        first = llguidance.LLMatcher(self.lltokenizer, text, log_level=_LOG_SILENT)
        if first.is_error():
            raise ValueError(f"bad {grammar.kind.replace('_', ' ')} grammar: {first.get_error()}")
        pristine = first.deep_copy()

        def make() -> Constraint:
            return Constraint(pristine.deep_copy(), self.n_vocab)

        return make


# JSON laid out as json.dumps does by default ({"a": 1, "b": [2, 3]}): the spacing models write
# naturally, and no free whitespace, so a sample cannot run on in newlines.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Constraint:
    """One sample's grammar state: masks the logits row before sampling, then accepts the chosen token."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._m = matcher
        self._n_vocab = n_vocab
        self._bits = llnp.allocate_token_bitmask(1, n_vocab)

    def _fill(self) -> np.ndarray:
        bits = self._bits[0]
        self._m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        self._check()
        return bits

    def allowed(self) -> np.ndarray:
        """Boolean ``(n_vocab,)``: the tokens that may come next."""
        flags = np.unpackbits(self._fill().view(np.uint8), count=self._n_vocab, bitorder="little")
        return flags.view(bool)

    def mask_inplace(self, row: np.ndarray) -> None:
        """Set the logits of forbidden tokens to ``-inf`` (a C-contiguous float32 row)."""
        ops.apply_bitmask(row, self._fill())

    def accept(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            self._check()
            raise ValueError(f"token {token} does not continue the constrained output")

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing may follow (the sample ends with ``stop``)."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    def _check(self) -> None:
        if self._m.is_error():
            raise ValueError(f"constrained output: {self._m.get_error()}")
