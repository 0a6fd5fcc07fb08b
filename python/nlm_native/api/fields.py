"""OpenAI request fields mapped to :class:`SamplingParams` (which validates them), and the shared bits
of the completions and chat endpoints: ids, usage, unknown-field errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..sampling import SamplingParams
from .types import Usage

SAMPLING_FIELDS = {
    "max_tokens", "temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
    "stop", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "stop_token_ids", "ignore_eos", "best_of",
}
ACCEPTED_METADATA = {"model", "user", "stream", "stream_options"}  # read, but they do not change the output
# nlm_native's own: scheduling priority ("high" | "normal" | "low") and a timeout in seconds
ENGINE_FIELDS = {"priority", "timeout"}
MAX_TEMPERATURE = 2.0  # OpenAI's range


def check_fields(fields: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{where}: unsupported field(s) {', '.join(map(repr, unknown))}; "
                         f"supported: {', '.join(sorted(allowed))}")


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _logit_bias(bias: Any) -> dict[int, float]:
    if bias is None:
        return {}
    if not isinstance(bias, Mapping):
        raise ValueError("logit_bias must map token ids to biases")
    out = {}
    for k, v in bias.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias: key {k!r} is not a token id") from None
        out[tid] = v
    return out


def sampling_params(fields: Mapping[str, Any], *, max_tokens_default: int | None, logprobs: bool,
                    top_logprobs: int, **extra: Any) -> SamplingParams:
    """Map OpenAI request fields to :class:`SamplingParams` (validated there)."""
    kw: dict[str, Any] = {k: fields[k] for k in SAMPLING_FIELDS if k in fields and fields[k] is not None}
    kw["max_tokens"] = fields.get("max_tokens", max_tokens_default)
    kw["stop"] = tuple(_stop_list(fields.get("stop")))
    kw["logit_bias"] = _logit_bias(fields.get("logit_bias"))
    stop_ids = fields.get("stop_token_ids")
    if stop_ids is not None and (isinstance(stop_ids, str | bytes) or not isinstance(stop_ids, Sequence)):
        raise ValueError(f"stop_token_ids must be a list of token ids, got {stop_ids!r}")
    kw["stop_token_ids"] = tuple(stop_ids or ())
    kw["logprobs"], kw["top_logprobs"] = logprobs, top_logprobs
    params = SamplingParams(**kw, **extra)
    if params.temperature > MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {params.temperature!r}")
    return params


def engine_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``priority`` and ``timeout`` for the engine (checked there)."""
    return {k: fields[k] for k in ENGINE_FIELDS if fields.get(k) is not None}


def include_usage(fields: Mapping[str, Any]) -> bool:
    opts = fields.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, Mapping) or set(opts) - {"include_usage"}:
        raise ValueError("stream_options supports only {'include_usage': bool}")
    if not fields.get("stream"):
        raise ValueError("stream_options is only allowed with stream=True")
    include = opts.get("include_usage", False)
    if not isinstance(include, bool):
        raise ValueError(f"stream_options.include_usage must be true or false, got {include!r}")
    return include


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    """OpenAI's usage, with ``prompt_tokens_details.cached_tokens``: prompt tokens the prefix cache supplied."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def cached_tokens(streams: Any) -> int:
    """Prompt tokens the prefix cache supplied to these finished streams."""
    return sum(s.metrics.cached_tokens for s in streams if getattr(s, "metrics", None) is not None)


def generated(token_ids: list[int], stop_reason: str | int | None) -> int:
    """Tokens generated: those returned, plus the end-of-generation / stop token that ended it."""
    return len(token_ids) + isinstance(stop_reason, int)
