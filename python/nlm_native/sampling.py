"""Sampling: :class:`SamplingParams` (every knob, validated) and :class:`Sampler`.

The order of operations on one row of logits (as Hugging Face's and vLLM's samplers):

1. ``logit_bias`` is added;
2. penalties: ``repeat_penalty`` over the last ``repeat_last_n`` tokens of prompt and
   output (llama.cpp's rule: a positive logit is divided by the penalty, a negative one
   multiplied), then OpenAI's ``frequency_penalty * count + presence_penalty * (count > 0)``
   subtracted over the output tokens;
3. ``temperature == 0``: the argmax (greedy; ties go to the lowest id). Otherwise the
   logits are divided by ``temperature``, then truncated by ``top_k``, ``top_p`` (the
   smallest set of most likely tokens whose probability reaches ``top_p``) and ``min_p``
   (tokens below ``min_p`` times the top probability), renormalised and sampled.

Log-probabilities reported to callers are of the model's own distribution, the
log-softmax of the raw logits, before bias, penalties, temperature and truncation
(what OpenAI and vLLM report by default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

MAX_TOP_LOGPROBS = 20
_TOP_P_PREFIX = 1024  # candidates sorted before falling back to a full sort for top_p
_QUICK_TRIES = 16  # constrained choice: rejections before scanning candidates at once
_SCAN_CANDIDATES = 4096


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    m = float(np.max(x))
    return x - (m + math.log(float(np.sum(np.exp(x - m)))))


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token id, log-probability) pairs, most likely first."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[0])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.lexsort((idx, -logprobs[idx]))]
    return [(int(i), float(logprobs[i])) for i in idx]


class Sampler:
    """Chooses tokens for one sample according to :class:`SamplingParams`.

    ``history`` (the tokens before the output: usually the prompt) feeds ``repeat_penalty``.
    Each sampler has its own random generator; samples of one request get independent
    streams derived from the request's seed.
    """

    def __init__(self, params: SamplingParams, n_vocab: int, *, rng: np.random.Generator | None = None,
                 history: Sequence[int] = ()) -> None:
        self.params = params
        self.n_vocab = n_vocab
        self.rng = rng if rng is not None else spawn_rngs(params.seed, 1)[0]
        for t in params.logit_bias:
            if t >= n_vocab:
                raise ValueError(f"SamplingParams.logit_bias: token id {t} is outside the vocabulary (size {n_vocab})")
        if params.logit_bias:
            self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
            self._bias_vals = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self.history: list[int] = list(history)
        self.output_counts: Counter[int] = Counter()

    def accept(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        self.history.append(token)
        self.output_counts[token] += 1

    def process(self, logits: np.ndarray) -> np.ndarray:
        """Logits after bias and penalties (a new float32 array; the input is untouched)."""
        p = self.params
        x = np.array(logits, dtype=np.float32, copy=True)
        if x.shape != (self.n_vocab,):
            raise ValueError(f"logits have shape {x.shape}, expected ({self.n_vocab},)")
        if p.logit_bias:
            x[self._bias_ids] += self._bias_vals
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0 and self.history:
            window = self.history if p.repeat_last_n == -1 else self.history[-p.repeat_last_n:]
            ids = np.unique(np.asarray(window, dtype=np.int64))
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if (p.frequency_penalty or p.presence_penalty) and self.output_counts:
            ids = np.fromiter(self.output_counts.keys(), dtype=np.int64)
            counts = np.fromiter(self.output_counts.values(), dtype=np.float32)
            x[ids] -= counts * p.frequency_penalty + p.presence_penalty
        return x

    def distribution(self, processed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after temperature and truncation (sum 1).

        Not used for greedy sampling. Candidates are ordered most likely first when a
        truncation needed the order; otherwise in id order.
        """
        p = self.params
        n = processed.shape[0]
        k = p.top_k if p.top_k > 0 else 0
        if k and k < n:  # select in float32 first: only k values are converted (the vocabulary is large)
            ids = np.argpartition(processed, n - k)[n - k:]
        else:
            ids = np.flatnonzero(processed > -np.inf)
        vals = processed[ids].astype(np.float64) / p.temperature
        m = vals.max() if vals.shape[0] else -np.inf
        if not np.isfinite(m):
            raise ValueError("every token is masked (all logits are -inf)")
        w = np.exp(vals - m)
        probs = w / w.sum()
        if p.top_p < 1.0:
            order = self._top_p_order(probs, p.top_p)
            ids, probs = ids[order], probs[order]
        if p.min_p > 0:
            keep = probs >= p.min_p * probs.max()
            ids, probs = ids[keep], probs[keep]
        probs = probs / probs.sum()
        return ids, probs

    @staticmethod
    def _top_p_order(probs: np.ndarray, top_p: float) -> np.ndarray:
        """Indices of the smallest most-likely set reaching ``top_p``, most likely first."""
        n = probs.shape[0]
        k = _TOP_P_PREFIX
        while k < n:
            # the top k in order are exact when they already reach top_p (k = 1024: the usual case)
            head = np.argpartition(probs, n - k)[n - k:]
            head = head[np.argsort(-probs[head], kind="stable")]
            csum = np.cumsum(probs[head])
            if csum[-1] >= top_p:
                return head[: int(np.searchsorted(csum, top_p)) + 1]
            k *= 16
        order = np.argsort(-probs)
        csum = np.cumsum(probs[order])
        cut = min(int(np.searchsorted(csum, top_p)) + 1, n)
        return order[:cut]

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token from one row of raw logits (does not record it: see ``accept``)."""
        x = self.process(logits)
        return self.choose(x)

    def choose(self, processed: np.ndarray) -> int:
        """Choose from already processed logits (bias, penalties and any mask applied)."""
        if self.params.greedy:
            if not np.isfinite(processed).any():
                raise ValueError("every token is masked (all logits are -inf)")
            return int(np.argmax(processed))
        ids, probs = self.distribution(processed)
        u = self.rng.random()
        j = int(np.searchsorted(np.cumsum(probs), u, side="right"))
        return int(ids[min(j, ids.shape[0] - 1)])


    def choose_where(self, processed: np.ndarray, allowed: Callable[[int], bool]) -> int:
        """Choose as :meth:`choose` does, among the tokens ``allowed`` accepts.

        Rejected choices are masked and the choice repeated (the usual case takes one or two
        tries); after a few rejections the check runs over the most likely candidates at once.
        Without truncation this is exactly ``choose``'s distribution restricted to the allowed
        tokens; with it, truncation is applied to what is left after masking.
        """
        x = np.array(processed, dtype=np.float32, copy=True)
        for _ in range(_QUICK_TRIES):
            if not np.isfinite(x).any():
                break
            t = self.choose(x)
            if allowed(t):
                return t
            x[t] = -np.inf
        finite = np.flatnonzero(np.isfinite(x))
        if finite.shape[0] > _SCAN_CANDIDATES:
            finite = finite[np.argpartition(-x[finite], _SCAN_CANDIDATES - 1)[:_SCAN_CANDIDATES]]
        ok = np.array([allowed(int(t)) for t in finite], dtype=bool)
        if not ok.any():
            raise ValueError("no token can continue the constrained output")
        y = np.full_like(x, -np.inf)
        y[finite[ok]] = x[finite[ok]]
        return self.choose(y)


def spawn_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
    """``n`` independent generators; the same seed always gives the same ones (any integer,
    negative ones included, as OpenAI's int64 seeds)."""
    ss = np.random.SeedSequence(None if seed is None else int(seed) & (2**64 - 1))
    return [np.random.default_rng(s) for s in ss.spawn(n)]
