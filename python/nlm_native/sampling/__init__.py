"""Sampling: :class:`SamplingParams` (the one validator), the batch sampler, and grammar constraints."""

from .constraints import Constraint, GrammarCompiler
from .params import MAX_TOP_LOGPROBS, Grammar, SamplingParams
from .sampler import Sampler, choose_rows, log_softmax, logprobs, spawn_rngs

__all__ = ["MAX_TOP_LOGPROBS", "Constraint", "Grammar", "GrammarCompiler", "SamplingParams", "Sampler",
           "choose_rows", "log_softmax", "logprobs", "spawn_rngs"]
