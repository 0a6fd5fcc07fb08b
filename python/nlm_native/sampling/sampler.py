"""The sampler: one token per sample from a whole step's logits.

The order of operations on one row of logits (as Hugging Face's and vLLM's samplers):

1. ``logit_bias`` is added;
2. penalties: ``repeat_penalty`` over the last ``repeat_last_n`` tokens of prompt and
   output (llama.cpp's rule: a positive logit is divided by the penalty, a negative one
   multiplied), then OpenAI's ``frequency_penalty * count + presence_penalty * (count > 0)``
   subtracted over the output tokens;
3. a grammar's mask (tokens it forbids become ``-inf``);
4. ``temperature == 0``: the argmax (greedy; ties go to the lowest id). Otherwise the
   logits are divided by ``temperature``, then truncated by ``top_k``, ``top_p`` (the
   smallest set of most likely tokens whose probability reaches ``top_p``) and ``min_p``
   (tokens below ``min_p`` times the top probability), renormalised and sampled.

Steps 1-3 are per row in NumPy (they touch few entries); step 4 runs in the core over every
row of the step at once (``csrc/sample``). Each sample draws one uniform number per token from
its own generator, derived from the request's seed, so a seeded sample gives the same tokens
whatever else shares the batch.

Log-probabilities reported to callers are of the model's own distribution, the
log-softmax of the raw logits, before bias, penalties, temperature and truncation
(what OpenAI and vLLM report by default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..core import ops
from .params import SamplingParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The log-softmax of one row, in float64 (a reference; the engine uses :func:`logprobs`)."""
    x = logits.astype(np.float64, copy=False)
    m = float(np.max(x))
    return x - (m + math.log(float(np.sum(np.exp(x - m)))))


_F32_MAX = float(np.finfo(np.float32).max)

def spawn_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
    """``n`` independent generators; the same seed always gives the same ones (any integer,
    negative ones included, as OpenAI's int64 seeds)."""
    ss = np.random.SeedSequence(None if seed is None else int(seed) & (2**64 - 1))
    return [np.random.default_rng(s) for s in ss.spawn(n)]


class Sampler:
    """The state of one sample's choices: its parameters, random generator and penalty history.

    ``history`` (the tokens before the output: usually the prompt) feeds ``repeat_penalty``.
    Samples of one request get independent generators derived from the request's seed.
    """

    def __init__(self, params: SamplingParams, n_vocab: int, *, rng: np.random.Generator | None = None,
                 history: Sequence[int] = ()) -> None:
        self.params = params
        self.n_vocab = n_vocab
        self.rng = rng if rng is not None else spawn_rngs(params.seed, 1)[0]
        params.check_vocab(n_vocab)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias_vals = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        p = params
        self._repeat = p.repeat_penalty != 1.0 and p.repeat_last_n != 0
        self._freq = bool(p.frequency_penalty or p.presence_penalty)
        self.history: list[int] = list(history)
        self.output_counts: Counter[int] = Counter()
        # this sample's row of the kernel's parameter arrays
        # (a top_k past the vocabulary keeps every token, as 0 does; clamped so it fits the kernel's int32)
        self.row = (float(p.temperature), min(int(p.top_k), n_vocab), float(p.top_p), float(p.min_p))

    @property
    def changes_logits(self) -> bool:
        """Whether bias or penalties apply (otherwise the row is sampled as it is)."""
        return bool(self._bias_ids.shape[0]) or (self._repeat and bool(self.history)) or (
            self._freq and bool(self.output_counts))

    def accept(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        self.history.append(token)
        self.output_counts[token] += 1

    def process_inplace(self, x: np.ndarray) -> None:
        """Apply bias and penalties to one float32 row of logits, in place."""
        p = self.params
        if self._bias_ids.shape[0]:
            x[self._bias_ids] += self._bias_vals
        if self._repeat and self.history:
            window = self.history if p.repeat_last_n == -1 else self.history[-p.repeat_last_n:]
            ids = np.unique(np.asarray(window, dtype=np.int64))
            v = x[ids].astype(np.float64)
            with np.errstate(over="ignore", divide="ignore"):  # an extreme penalty saturates, as float32 can hold
                out = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
            x[ids] = np.clip(out, -_F32_MAX, _F32_MAX)
        if self._freq and self.output_counts:
            ids = np.fromiter(self.output_counts.keys(), dtype=np.int64)
            counts = np.fromiter(self.output_counts.values(), dtype=np.float32)
            x[ids] -= counts * p.frequency_penalty + p.presence_penalty

    def process(self, logits: np.ndarray) -> np.ndarray:
        """Logits after bias and penalties (a new float32 array; the input is untouched)."""
        x = np.array(logits, dtype=np.float32, copy=True)
        if x.shape != (self.n_vocab,):
            raise ValueError(f"logits have shape {x.shape}, expected ({self.n_vocab},)")
        self.process_inplace(x)
        return x

    def draw(self) -> float:
        """This sample's uniform number for its next token (greedy samples draw nothing)."""
        return 0.0 if self.params.greedy else float(self.rng.random())

    def distribution(self, processed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after temperature and truncation (sum 1), in the
        order the sampler walks them (most likely first when a truncation needed the order)."""
        t, k, top_p, min_p = self.row
        return ops.distribution(np.ascontiguousarray(processed, dtype=np.float32), t, k, top_p, min_p)

    def choose(self, processed: np.ndarray) -> int:
        """Choose from one already processed row (bias, penalties and any mask applied)."""
        return int(choose_rows([self], np.ascontiguousarray(processed, dtype=np.float32)[None, :])[0])

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token from one row of raw logits (does not record it: see ``accept``)."""
        return self.choose(self.process(logits))


def choose_rows(samplers: Sequence[Sampler], processed: np.ndarray, *, n_threads: int = 1) -> np.ndarray:
    """One token per row of processed logits ``(R, V)``, row ``r`` by ``samplers[r]`` (int32)."""
    n = len(samplers)
    rows = np.array([s.row for s in samplers], dtype=np.float64).reshape(n, 4)
    u = np.array([s.draw() for s in samplers], dtype=np.float64)
    return ops.sample_rows(processed, rows[:, 0].astype(np.float32), rows[:, 1].astype(np.int32),
                           rows[:, 2].astype(np.float32), rows[:, 3].astype(np.float32), u, n_threads=n_threads)


def logprobs(raw: np.ndarray, k: int, *, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per raw row ``(R, V)``: the ``k`` most likely ids and their log-probabilities (most likely first,
    ties to the lower id; id -1 where a row has fewer than ``k`` finite logits) and the row's
    log-sum-exp, from which any token's log-probability is ``raw[r, t] - lse[r]``."""
    _, ids, top, lse = ops.logprob_rows(np.ascontiguousarray(raw, dtype=np.float32), None, k, n_threads=n_threads)
    return ids, top, lse
