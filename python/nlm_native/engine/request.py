"""A request's state in the engine: its samples, what of it is in the KV cache, and the token update.

A request is ``WAITING`` (nothing cached), ``PREFILLING`` (its prompt, or after a preemption its
prompt and each sample's tokens, being computed in chunks), ``RUNNING`` (every live sample decodes
one token per step) or ``FINISHED``. Text passes through an incremental detokenizer and a stop
matcher per sample, so what comes out is always safe to show: whole characters, never the start
of a stop string.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sampling import Constraint, Sampler, SamplingParams
from ..text import IncrementalDetokenizer, StopMatcher, Tokenizer
from .outputs import StreamChunk, TokenLogprob


class Priority(enum.IntEnum):
    """Scheduling priority: lower values go first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise ValueError(f"priority must be 'high', 'normal' or 'low', got {value!r}")


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Work:
    """Tokens to append to one sequence's cache, in chunks: ``tokens[done:]`` at ``start + done``."""

    seq: int
    tokens: list[int]
    start: int
    logits: bool  # the last token's logits are wanted (a prompt's first sampling)
    done: int = 0

    @property
    def left(self) -> int:
        return len(self.tokens) - self.done


@dataclass
class SampleState:
    index: int
    sampler: Sampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    constraint: Constraint | None
    seq: int = -1
    position: int = 0  # where ``last`` goes in the cache
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # released
    pending: list[TokenLogprob] = field(default_factory=list)  # held back with their text
    sum_logprob: float = 0.0
    scored: int = 0
    last: int = -1
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def live(self) -> bool:
        return self.finish_reason is None


Sink = Callable[[list[StreamChunk] | BaseException | None], None]


@dataclass(eq=False)  # compared and hashed by identity
class Request:
    """One submitted request. ``sink`` receives each step's chunks, then ``None`` (done) or an exception."""

    id: str
    prompt: list[int]
    params: SamplingParams
    priority: Priority
    sink: Sink
    max_new: int  # tokens each sample may generate
    make_constraint: Callable[[], Constraint] | None
    arrival: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    status: Status = Status.WAITING
    samples: list[SampleState] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    root: int = -1  # the prompt's sequence while prefilling
    seqs: set[int] = field(default_factory=set)  # every sequence it holds
    preemptions: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied at the last admission
    # timings (time.monotonic)
    first_token_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_at: float | None = None
    error: BaseException | None = None
    stream_ref: Callable[[], object] | None = None  # a weak reference to its stream, for the final metrics
    on_finish: Callable[[list[int]], None] | None = None  # gets prompt + sample 0's tokens when it ends well
    ended: threading.Event = field(default_factory=threading.Event)  # set once its blocks are freed

    @property
    def live_samples(self) -> list[SampleState]:
        return [s for s in self.samples if s.live]

    @property
    def want_logprobs(self) -> bool:
        return self.params.logprobs or self.params.samples > self.params.n  # best_of ranks by log-probability

    def itl(self) -> list[float]:
        """Inter-token latencies in seconds: between consecutive steps that gave this request tokens."""
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival


class TokenUpdate:
    """Turns a sample's chosen token into text, stop decisions and log-probabilities."""

    def __init__(self, tokenizer: Tokenizer, eog_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.eog_ids = eog_ids

    def new_samples(self, req: Request, n_vocab: int, rngs: list) -> list[SampleState]:
        p = req.params
        return [SampleState(
            index=i, sampler=Sampler(p, n_vocab, rng=rngs[i], history=req.prompt),
            detok=IncrementalDetokenizer(self.tokenizer, at_start=False), stops=StopMatcher(p.stop),
            constraint=req.make_constraint() if req.make_constraint else None, position=len(req.prompt))
            for i in range(p.samples)]

    def advance(self, req: Request, s: SampleState, token: int, lp: float | None,
                top: list[tuple[int, float]] | None) -> StreamChunk:
        """Record ``token`` for sample ``s``; the chunk it adds (text, or the end)."""
        params = req.params
        s.sampler.accept(token)
        s.last = token
        want_lp = lp is not None
        if want_lp:
            s.sum_logprob += lp
            s.scored += 1
        if (token in self.eog_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return self.finish(req, s, "stop", token)
        if s.constraint is not None:
            s.constraint.accept(token)
        offset = len(s.stops.text)
        s.token_ids.append(token)
        if want_lp:
            b = self.tokenizer.token_bytes(token)
            s.pending.append(TokenLogprob(token, b.decode("utf-8", errors="replace"), b, lp, top or [], offset))
        text, stopped = s.stops.feed(s.detok.push(token))
        if stopped:
            s.finish_reason, s.stop_reason = "stop", s.stops.stopped
            return self._scored(s, StreamChunk(s.index, text, [token], self._release_logprobs(s, params),
                                               s.finish_reason, s.stop_reason), want_lp)
        if s.constraint is not None and s.constraint.done:
            return self.finish(req, s, "stop", None, text, [token])
        if len(s.token_ids) >= req.max_new:
            return self.finish(req, s, "length", None, text, [token])
        return StreamChunk(s.index, text, [token], self._release_logprobs(s, params))

    def finish(self, req: Request, s: SampleState, reason: str, stop_reason: str | int | None, text: str = "",
               token_ids: list[int] | None = None) -> StreamChunk:
        """End the sample: release the held text (it was no stop string after all) and say why."""
        more, stopped = s.stops.feed(s.detok.flush())
        text += more
        if stopped:
            reason, stop_reason = "stop", s.stops.stopped
        else:
            text += s.stops.flush()
        s.finish_reason, s.stop_reason = reason, stop_reason
        chunk = StreamChunk(s.index, text, token_ids or [], self._release_logprobs(s, req.params), reason,
                            stop_reason)
        return self._scored(s, chunk, s.scored > 0)

    @staticmethod
    def _scored(s: SampleState, chunk: StreamChunk, want_lp: bool) -> StreamChunk:
        if want_lp:
            chunk.cumulative_logprob, chunk.scored_tokens = s.sum_logprob, s.scored
        return chunk

    @staticmethod
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
