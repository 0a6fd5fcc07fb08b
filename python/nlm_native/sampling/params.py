"""``SamplingParams``: every knob of how tokens are chosen and when generation stops, validated once.

The engine and the sampler trust a ``SamplingParams``: each rule is checked here, where a request enters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

MAX_TOP_LOGPROBS = 20

GrammarKind = Literal["json_object", "json_schema", "lark", "regex"]


@dataclass(frozen=True)
class Grammar:
    """A constraint on the generated text, enforced token by token (see :mod:`nlm_native.sampling.constraints`).

    * ``Grammar.json_object()``: any JSON object (OpenAI's ``response_format={"type": "json_object"}``);
    * ``Grammar.json_schema(schema)``: JSON that validates against ``schema`` (``json_schema``, strict);
    * ``Grammar.lark(text)``: a context-free grammar, in Lark syntax as llguidance reads it (rules,
      regular expressions in ``/.../``, ``%json {...}`` for embedded JSON schemas, special tokens as
      ``<|im_end|>``) or in llama.cpp's GBNF (``root ::= ...``), which llguidance translates;
    * ``Grammar.regex(pattern)``: text matching a regular expression.

    The source is checked (compiled against the model's vocabulary) when a request is submitted.
    """

    kind: GrammarKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "lark", "regex"):
            raise ValueError(f"Grammar.kind must be json_object, json_schema, lark or regex, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise ValueError(f"Grammar.source must be a string, got {type(self.source).__name__}")
        if self.kind != "json_object" and not self.source.strip():
            raise ValueError(f"Grammar.source is empty (kind {self.kind})")

    @classmethod
    def json_object(cls) -> Grammar:
        return cls("json_object", "")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool) -> Grammar:
        if not isinstance(schema, Mapping | bool):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        try:
            return cls("json_schema", json.dumps(schema))
        except (TypeError, ValueError) as e:
            raise ValueError(f"the JSON schema is not JSON: {e}") from None

    @classmethod
    def lark(cls, text: str) -> Grammar:
        return cls("lark", text)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls("regex", pattern)


@dataclass(frozen=True)
class SamplingParams:
    """How to choose tokens, and when to stop. Invalid values raise ``ValueError`` naming the field.

    * ``max_tokens``: most tokens to generate per sample (``None``: until the context is full).
    * ``temperature``: 0 is greedy and deterministic; otherwise the softmax temperature.
    * ``top_k`` (0 or -1: off), ``top_p`` (1: off), ``min_p`` (0: off): truncation, applied
      after temperature.
    * ``repeat_penalty`` (1: off) over the last ``repeat_last_n`` tokens (prompt included;
      0: off, -1: all), ``frequency_penalty`` and ``presence_penalty`` (OpenAI's, -2..2,
      over the generated tokens), ``logit_bias`` (token id -> bias in -100..100).
    * ``seed``: a fixed seed gives the same output every run; ``None`` draws fresh entropy.
    * ``stop``: strings that end generation when they appear in the text (the stop text is
      not returned); ``stop_token_ids``: tokens that end it; ``ignore_eos``: keep going past
      the model's end-of-generation tokens.
    * ``logprobs``: report the chosen token's log-probability, and ``top_logprobs`` (0..20)
      most likely alternatives, for each generated token (of the model's distribution
      before bias, penalties, temperature and truncation).
    * ``n``: samples returned; ``best_of`` (>= n): samples generated, of which the ``n``
      with the highest mean log-probability are returned. All share the prompt's KV blocks.
    * ``grammar``: a :class:`Grammar` every sample's text must follow; the sample ends (``stop``)
      when the grammar is complete and nothing can follow.
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    best_of: int | None = None
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} {why}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return (is_int(v) or isinstance(v, float | np.floating)) and math.isfinite(v)

        if self.max_tokens is not None and (not is_int(self.max_tokens) or self.max_tokens < 0):
            raise bad("max_tokens", "must be a non-negative integer or None")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty"):
            if not is_num(getattr(self, name)):
                raise bad(name, "must be a finite number")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0")
        if not is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", "must be an integer >= 0 (0 or -1: off)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        if self.repeat_penalty <= 0:
            raise bad("repeat_penalty", "must be > 0")
        if not is_int(self.repeat_last_n) or self.repeat_last_n < -1:
            raise bad("repeat_last_n", "must be an integer >= -1")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise bad(name, "must be in [-2, 2]")
        if not isinstance(self.logit_bias, Mapping):
            raise bad("logit_bias", "must be a mapping of token id to bias")
        for k, v in self.logit_bias.items():
            if not is_int(k) or k < 0:
                raise ValueError(f"SamplingParams.logit_bias: token id {k!r} is not a non-negative integer")
            if not is_num(v) or not -100 <= v <= 100:
                raise ValueError(f"SamplingParams.logit_bias[{k}] must be a number in [-100, 100], got {v!r}")
        if self.seed is not None and not is_int(self.seed):
            raise bad("seed", "must be an integer or None")
        def is_seq(v: Any) -> bool:
            return isinstance(v, Sequence | np.ndarray) and not isinstance(v, str | bytes)

        if not is_seq(self.stop) or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be a sequence of non-empty strings")
        if not is_seq(self.stop_token_ids) or not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be a sequence of non-negative token ids")
        for name in ("logprobs", "ignore_eos"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise bad(name, "must be a bool")
        if not is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad("top_logprobs", f"must be an integer in [0, {MAX_TOP_LOGPROBS}]")
        if self.top_logprobs and not self.logprobs:
            raise bad("top_logprobs", "needs logprobs=True")
        if not is_int(self.n) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if self.best_of is not None and (not is_int(self.best_of) or self.best_of < self.n):
            raise bad("best_of", f"must be an integer >= n ({self.n}) or None")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise bad("grammar", "must be a nlm_native.Grammar or None")

    def check_vocab(self, n_vocab: int) -> None:
        """The token ids named here (``logit_bias``, ``stop_token_ids``) exist in a vocabulary of ``n_vocab``."""
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("logit_bias", self.logit_bias)):
            for t in ids:
                if t >= n_vocab:
                    raise ValueError(f"SamplingParams.{name}: token id {t} is outside the vocabulary (size {n_vocab})")

    @property
    def samples(self) -> int:
        """How many sequences are generated (``best_of`` or ``n``)."""
        return self.best_of or self.n

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
