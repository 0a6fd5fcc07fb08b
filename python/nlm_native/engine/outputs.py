"""What a request gives back: per-step :class:`StreamChunk`s, and their fold, :class:`CompletionOutput`s."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
class CompletionOutput:
    """One finished sample."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    stop_reason: str | int | None  # the stop string or token id that ended it, if any
    logprobs: list[TokenLogprob] | None
    cumulative_logprob: float | None  # over every sampled token, an ending eos included (logprobs or best_of)
    scored_tokens: int = 0

    @property
    def mean_logprob(self) -> float | None:
        if self.cumulative_logprob is None or self.scored_tokens == 0:
            return None
        return self.cumulative_logprob / self.scored_tokens


def fold(chunks: Iterable[StreamChunk], *, samples: int, n: int, logprobs: bool) -> list[CompletionOutput]:
    """The finished samples a chunk stream adds up to; of ``samples`` > ``n``, the ``n`` with the
    highest mean log-probability (best_of), renumbered from 0."""
    texts: list[list[str]] = [[] for _ in range(samples)]
    tokens: list[list[int]] = [[] for _ in range(samples)]
    lps: list[list[TokenLogprob]] = [[] for _ in range(samples)]
    finish: list[tuple[str, str | int | None]] = [("length", None)] * samples
    scores: list[tuple[float | None, int]] = [(None, 0)] * samples
    for c in chunks:
        texts[c.index].append(c.text)
        tokens[c.index].extend(c.token_ids)
        if c.logprobs:
            lps[c.index].extend(c.logprobs)
        if c.finish_reason:
            finish[c.index] = (c.finish_reason, c.stop_reason)
            scores[c.index] = (c.cumulative_logprob, c.scored_tokens)
    outs = [CompletionOutput(i, "".join(texts[i]), tokens[i], finish[i][0], finish[i][1],
                             lps[i] if logprobs else None, scores[i][0], scores[i][1]) for i in range(samples)]
    if samples > n:
        worst = float("-inf")
        outs.sort(key=lambda o: -(m if (m := o.mean_logprob) is not None else worst))
        outs = outs[:n]
        for i, o in enumerate(outs):
            o.index = i
    return outs
