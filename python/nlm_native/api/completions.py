"""OpenAI ``/v1/completions`` over an :class:`~nlm_native.api.backend.Backend` (an :class:`~nlm_native.LLM`).

One builder: :func:`_chunks` turns the engine's streams into the streamed response's chunks; the
whole response is :func:`_fold` of those chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..engine import RequestStream, TokenLogprob, interleave
from ..sampling import SamplingParams
from ..text import Tokenizer
from .backend import Backend
from .fields import (
    ACCEPTED_METADATA,
    ENGINE_FIELDS,
    SAMPLING_FIELDS,
    cached_tokens,
    check_fields,
    engine_options,
    generated,
    include_usage,
    new_id,
    now,
    sampling_params,
    usage,
)
from .types import Completion, CompletionLogprobs

COMPLETION_FIELDS = SAMPLING_FIELDS | ACCEPTED_METADATA | ENGINE_FIELDS | {"logprobs", "echo", "suffix"}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for the legacy completions API


def _token_text(tok: Tokenizer, tid: int) -> str:
    return tok.token_bytes(tid).decode("utf-8", errors="replace")


def _top_dict(top: list[tuple[int, float]], tok: Tokenizer) -> dict[str, float]:
    """OpenAI's legacy shape keys alternatives by text; of tokens with the same text the likeliest stays."""
    out: dict[str, float] = {}
    for t, lp in top:
        out.setdefault(_token_text(tok, t), lp)
    return out


def _logprobs(entries: list[TokenLogprob], tok: Tokenizer, offset: int) -> CompletionLogprobs:
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e.top, tok) for e in entries],
        "text_offset": [e.text_offset + offset for e in entries],
    }


def _fim_prompt(llm: Backend, prompt: str, suffix: str) -> str:
    vocab = llm.tokenizer.vocab
    for pre, suf, mid in (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<PRE>", "<SUF>", "<MID>"),
                          ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")):
        if pre in vocab and suf in vocab and mid in vocab:
            return f"{pre}{prompt}{suf}{suffix}{mid}"
    raise ValueError(f"suffix (fill-in-the-middle) needs FIM tokens, which {llm.model_name} does not have")


def _prompt_list(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, int | np.integer) and not isinstance(t, bool)
                                                       for t in prompt):
        return [list(prompt)]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) or (isinstance(p, Sequence) and p)
                                                       for p in prompt):
        return [p if isinstance(p, str) else list(p) for p in prompt]
    raise ValueError("prompt must be a string, a list of token ids, or a list of those")


def create_completion(llm: Backend, prompt: Any, **fields: Any) -> Completion | Iterator[Completion]:
    check_fields(fields, COMPLETION_FIELDS, "create_completion")
    lp = fields.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_COMPLETION_LOGPROBS):
        raise ValueError(f"logprobs must be an integer in [0, {MAX_COMPLETION_LOGPROBS}], got {lp!r}")
    params = sampling_params(fields, max_tokens_default=16, logprobs=lp is not None, top_logprobs=lp or 0)
    echo = bool(fields.get("echo"))
    if echo and lp is not None:
        raise ValueError("echo together with logprobs (log-probabilities of the prompt) is not supported")
    streaming = bool(fields.get("stream"))
    with_usage = include_usage(fields)
    if streaming and params.samples > params.n:
        raise ValueError("best_of > n cannot be streamed: the best samples are known only at the end")
    prompts = _prompt_list(prompt)
    echoes = [(p if isinstance(p, str) else llm.detokenize(p)) if echo else "" for p in prompts]
    suffix = fields.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise ValueError("suffix must be a string")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("suffix needs text prompts")
        prompts = [_fim_prompt(llm, p, suffix) for p in prompts]
    ids_list = [llm.check(p, params) for p in prompts]  # every prompt is checked before anything runs
    head = {"id": new_id("cmpl-"), "object": "text_completion", "created": now(),
            "model": fields.get("model") or llm.model_name}
    opts = engine_options(fields)
    streams = [llm.submit(ids, params, **opts) for ids in ids_list]
    chunks = _chunks(llm.tokenizer, streams, ids_list, echoes, params, head, with_usage or not streaming,
                     scores=not streaming)
    if streaming:
        return chunks
    return _fold(head, chunks, params)


def _chunks(tok: Tokenizer, streams: list[RequestStream], ids_list: list[list[int]], echoes: list[str],
            params: SamplingParams, head: dict[str, Any], with_usage: bool, *, scores: bool = False
            ) -> Iterator[Completion]:
    """The streamed response: text deltas per choice (``index = prompt * n + sample``), then usage."""
    n_completion = 0
    n = params.samples
    for pi, echo in enumerate(echoes):
        if echo:
            for j in range(n):
                yield {**head, "choices": [{"text": echo, "index": pi * n + j, "logprobs": None,
                                            "finish_reason": None}]}  # type: ignore[misc]
    merged = interleave(streams)
    try:
        for pi, c in merged:
            n_completion += generated(c.token_ids, c.stop_reason)
            logprobs = _logprobs(c.logprobs, tok, len(echoes[pi])) if c.logprobs is not None else None
            choice = {"text": c.text, "index": pi * n + c.index, "logprobs": logprobs,
                      "finish_reason": c.finish_reason}
            if scores and c.finish_reason is not None and c.cumulative_logprob is not None:
                choice["_score"] = (c.cumulative_logprob, c.scored_tokens)  # for best_of; dropped by the fold
            yield {**head, "choices": [choice]}  # type: ignore[misc]
    finally:  # closed early (a client went away): every request is aborted, its blocks freed
        merged.close()
    if with_usage:
        yield {**head, "choices": [], "usage": usage(sum(map(len, ids_list)), n_completion,  # type: ignore[misc]
                                                     cached_tokens(streams))}


def _fold(head: dict[str, Any], chunks: Iterator[Completion], params: SamplingParams) -> Completion:
    """The whole response: the streamed chunks added up per choice (best_of keeps the best n)."""
    choices: dict[int, dict[str, Any]] = {}
    scores: dict[int, tuple[float, int]] = {}
    use = None
    for ch in chunks:
        if "usage" in ch and not ch["choices"]:
            use = ch["usage"]
        for c in ch["choices"]:
            d = choices.setdefault(c["index"], {"text": "", "index": c["index"], "logprobs": None,
                                                "finish_reason": None})
            d["text"] += c["text"]
            if c["logprobs"] is not None:
                if d["logprobs"] is None:
                    d["logprobs"] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    d["logprobs"][k].extend(c["logprobs"][k])
            if c["finish_reason"] is not None:
                d["finish_reason"] = c["finish_reason"]
            if "_score" in c:
                scores[c["index"]] = c["_score"]  # type: ignore[typeddict-item]
    out = [choices[i] for i in sorted(choices)]
    k = params.samples
    if k > params.n:  # best_of: per prompt, the n samples with the highest mean log-probability
        kept = []
        for pi in range(len(out) // k):
            group = out[pi * k:(pi + 1) * k]

            def mean(c: dict[str, Any]) -> float:
                s, m = scores.get(c["index"], (float("-inf"), 1))
                return s / m if m else float("-inf")

            group = sorted(group, key=lambda c: -mean(c))[: params.n]
            for j, c in enumerate(group):
                c["index"] = pi * params.n + j
            kept.extend(group)
        out = kept
    return {**head, "choices": out, "usage": use}  # type: ignore[typeddict-item]
