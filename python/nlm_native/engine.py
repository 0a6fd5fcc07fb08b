"""The generation loop: prefill once, fork per sample, decode all samples in one batch per step.

``run`` is a generator of steps; each step is a list of :class:`StreamChunk` (one per sample that
produced text or finished). Text passes through an incremental detokenizer and a stop
matcher per sample, so what comes out is always safe to show: whole characters, never
the start of a stop string. Closing the generator early frees every KV block it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._core import KVCacheFull
from .batch import Batch
from .detokenizer import IncrementalDetokenizer
from .model import Model
from .sampling import Sampler, SamplingParams, log_softmax, spawn_rngs, top_logprobs
from .stops import StopMatcher
from .tokenizer import END_OF_TURN, TOKEN_CONTROL, Tokenizer


def metadata_end_ids(metadata: Mapping[str, Any]) -> set[int]:
    """The end-of-generation ids the metadata names (eos, eot, eom)."""
    return {int(metadata[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id") if k in metadata}


def end_of_generation_ids(tokenizer: Tokenizer, metadata: Mapping[str, Any]) -> set[int]:
    """Token ids that end generation: the metadata's eos/eot/eom and known end-of-turn control tokens."""
    ids = metadata_end_ids(metadata)
    for text in END_OF_TURN:  # control tokens that end a turn in common chat formats (as llama.cpp has it)
        tid = tokenizer.vocab.get(text)
        if tid is not None and tokenizer.types[tid] == TOKEN_CONTROL:
            ids.add(tid)
    return ids


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives."""

    token_id: int
    token: str  # the token's text (bytes decoded with replacement)
    bytes: bytes
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first
    text_offset: int  # where the token's text starts in the sample's text


@dataclass
class StreamChunk:
    """What one step added to one sample."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None  # "stop" | "length" once finished
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    # on the finishing chunk, when log-probabilities were computed: the sum over every sampled
    # token (an ending eos / stop token included) and how many there were
    cumulative_logprob: float | None = None
    scored_tokens: int = 0


@dataclass
class SampleState:
    index: int
    seq: int
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    position: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # released
    pending: list[TokenLogprob] = field(default_factory=list)  # held back with their text
    sum_logprob: float = 0.0
    scored: int = 0
    last: int = -1
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class TokenFilter(ABC):
    """A constraint on which tokens may come next (e.g. JSON only).

    ``allowed(token_id)`` is asked for candidates before one is chosen; ``accept`` is told
    the chosen one; ``done`` ends generation with ``finish_reason="stop"``.
    """

    @abstractmethod
    def allowed(self, token_id: int) -> bool: ...

    @abstractmethod
    def accept(self, token_id: int) -> None: ...

    @property
    def done(self) -> bool:
        return False


def check(model: Model, prompt: Sequence[int], params: SamplingParams) -> list[int]:
    """Everything about a request that can be wrong, raised as ``ValueError`` before any work."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("the prompt is empty")
    n_vocab = model.n_vocab
    for t in prompt:
        if not 0 <= t < n_vocab:
            raise ValueError(f"prompt token id {t} is outside the vocabulary (size {n_vocab})")
    n_ctx = model.n_ctx
    if len(prompt) >= n_ctx:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the context holds {n_ctx} (n_ctx), "
                         "leaving no room to generate")
    pool = model.kv_blocks * model.block_tokens
    if len(prompt) >= pool:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the KV pool holds {pool} (kv_blocks x block_tokens)")
    for name, ids in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias)):
        for t in ids:
            if t >= n_vocab:
                raise ValueError(f"{name}: token id {t} is outside the vocabulary (size {n_vocab})")
    return prompt


def run(
    model: Model,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    eog_ids: set[int],
    make_filter: Callable[[], TokenFilter] | None = None,
) -> Iterator[list[StreamChunk]]:
    """Generate ``params.samples`` continuations of ``prompt``; an iterator of each step's chunks.

    The request is checked when this is called, not when the iterator is first advanced.
    """
    prompt = check(model, prompt, params)
    return _loop(model, tokenizer, prompt, params, eog_ids, make_filter)


def _loop(model: Model, tokenizer: Tokenizer, prompt: list[int], params: SamplingParams, eog_ids: set[int],
          make_filter: Callable[[], TokenFilter] | None) -> Iterator[list[StreamChunk]]:
    n_vocab = model.n_vocab
    budget = model.n_ctx - len(prompt)
    max_new = budget if params.max_tokens is None else min(params.max_tokens, budget)
    want_lp = params.logprobs or (params.samples > params.n)  # best_of ranks by log-probability
    stop_ids = set(params.stop_token_ids)
    ends = set() if params.ignore_eos else set(eog_ids)
    mask_eog = np.fromiter(eog_ids, dtype=np.int64) if params.ignore_eos and eog_ids else None

    seqs: list[int] = []
    try:
        root = model.new_sequence()
        seqs.append(root)
        if max_new == 0:
            yield [StreamChunk(i, "", [], [] if params.logprobs else None, "length") for i in range(params.n)]
            return
        batch = Batch()
        batch.add_sequence(prompt, 0, root, logits="last")
        first = model.forward(batch)[-1]
        rngs = spawn_rngs(params.seed, params.samples)
        samples: list[SampleState] = []
        for i in range(params.samples):
            seq = root if i == params.samples - 1 else model.fork(root)
            if seq != root:
                seqs.append(seq)
            samples.append(SampleState(
                index=i, seq=seq, sampler=Sampler(params, n_vocab, rng=rngs[i], history=prompt),
                detok=IncrementalDetokenizer(tokenizer, at_start=False), stops=StopMatcher(params.stop),
                position=len(prompt)))
        filters = [make_filter() for _ in samples] if make_filter else None
        rows: list[np.ndarray] = [first] * len(samples)
        live = list(samples)
        while live:
            step: list[StreamChunk] = []
            for s, raw in zip(live, rows, strict=True):
                step.append(_advance(s, raw, params, tokenizer, want_lp, ends, stop_ids, mask_eog, max_new,
                                     filters[s.index] if filters else None))
            for s in live:
                if s.finish_reason is not None:  # its blocks go back to the pool now
                    model.free(s.seq)
                    seqs.remove(s.seq)
            live = [s for s in live if s.finish_reason is None]
            out = None
            while live:
                batch = Batch()
                for s in live:
                    batch.add(s.last, s.position, s.seq, logits=True)
                try:
                    out = model.forward(batch)
                    break
                except KVCacheFull:
                    # the shared pool is full: the longest sample ends here and frees its blocks;
                    # the others go on (a single sample ends when the pool cannot hold more)
                    victim = max(live, key=lambda v: (len(v.token_ids), v.index))
                    step.append(_finish(victim, "length", None))
                    model.free(victim.seq)
                    seqs.remove(victim.seq)
                    live.remove(victim)
            for s in live:
                s.position += 1
            rows = list(out) if out is not None else []
            yield [d for d in step if d.text or d.token_ids or d.finish_reason]
    finally:
        for seq in seqs:
            model.free(seq)


def _advance(s: SampleState, raw: np.ndarray, params: SamplingParams, tokenizer: Tokenizer, want_lp: bool,
             ends: set[int], stop_ids: set[int], mask_eog: np.ndarray | None, max_new: int,
             flt: TokenFilter | None) -> StreamChunk:
    x = s.sampler.process(raw)
    if mask_eog is not None:
        x[mask_eog] = -np.inf
    token = s.sampler.choose_where(x, flt.allowed) if flt is not None else s.sampler.choose(x)
    s.sampler.accept(token)
    s.last = token
    if want_lp:
        lp_all = log_softmax(raw)
        lp = float(lp_all[token])
        s.sum_logprob += lp
        s.scored += 1
    if token in ends or token in stop_ids:
        return _finish(s, "stop", token)
    if flt is not None:
        flt.accept(token)
    offset = len(s.stops.text)
    s.token_ids.append(token)
    if want_lp:
        b = tokenizer.token_bytes(token)
        s.pending.append(TokenLogprob(token, b.decode("utf-8", errors="replace"), b, lp,
                                      top_logprobs(lp_all, params.top_logprobs), offset))
    text, stopped = s.stops.feed(s.detok.push(token))
    if stopped:
        s.finish_reason, s.stop_reason = "stop", s.stops.stopped
        return _scored(s, StreamChunk(s.index, text, [token], _release_logprobs(s, params), s.finish_reason,
                                      s.stop_reason), want_lp)
    if flt is not None and flt.done:
        return _finish(s, "stop", None, text, [token])
    if len(s.token_ids) >= max_new:
        return _finish(s, "length", None, text, [token])
    return StreamChunk(s.index, text, [token], _release_logprobs(s, params))


def _finish(s: SampleState, reason: str, stop_reason: str | int | None, text: str = "",
            token_ids: list[int] | None = None) -> StreamChunk:
    """End the sample: release the held text (it was no stop string after all) and say why."""
    more, stopped = s.stops.feed(s.detok.flush())
    text += more
    if stopped:
        reason, stop_reason = "stop", s.stops.stopped
    else:
        text += s.stops.flush()
    s.finish_reason, s.stop_reason = reason, stop_reason
    chunk = StreamChunk(s.index, text, token_ids or [], _release_logprobs(s, s.sampler.params), reason, stop_reason)
    return _scored(s, chunk, s.scored > 0)


def _scored(s: SampleState, chunk: StreamChunk, want_lp: bool) -> StreamChunk:
    if want_lp:
        chunk.cumulative_logprob, chunk.scored_tokens = s.sum_logprob, s.scored
    return chunk


def _release_logprobs(s: SampleState, params: SamplingParams) -> list[TokenLogprob] | None:
    """Log-probabilities of the tokens whose text starts in the released text.

    They are held back with their text; once a stop string cut the text, those starting
    at or after the cut are dropped.
    """
    if s.finish_reason is None and not s.stops.stopped:
        upto = s.stops.released
    else:
        upto = len(s.stops.text) + (0 if s.stops.stopped else 1)
    n = 0
    while n < len(s.pending) and s.pending[n].text_offset < upto:
        n += 1
    out, s.pending = s.pending[:n], s.pending[n:]
    if s.finish_reason is not None:
        s.pending = []
    s.logprobs.extend(out)
    return out if params.logprobs else None
