"""``LLM``: a model with its tokenizer and chat template; text in, text out.

Two levels, as in llama-cpp-python:

* low: :meth:`LLM.tokenize`, :meth:`LLM.detokenize`, :meth:`LLM.generate` (a list of
  :class:`CompletionOutput`) and :meth:`LLM.stream` (an iterator of
  :class:`~nlm_native.engine.StreamChunk`), driven by one :class:`SamplingParams`;
* high: :meth:`LLM.create_completion` and :meth:`LLM.create_chat_completion`, taking
  OpenAI's request fields and returning OpenAI-shaped dicts (or, with ``stream=True``,
  an iterator of chunk dicts from the same generator). See :mod:`nlm_native.openai_api`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import engine
from .chat import ChatTemplate, ChatTemplateError
from .engine import StreamChunk, TokenFilter, TokenLogprob
from .model import Model
from .sampling import SamplingParams
from .tokenizer import Tokenizer

Prompt = str | Sequence[int]


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


def _flatten(steps: Iterator[list[StreamChunk]]) -> Iterator[StreamChunk]:
    """The chunks of every step; closing this closes the generation (its KV blocks are freed)."""
    try:
        for step in steps:
            yield from step
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


class LLM:
    """A GGUF model ready for generation.

    ``n_ctx`` is the most tokens a sequence may hold (prompt plus output) and the size of
    the KV pool its samples share unless ``kv_blocks`` says otherwise. ``chat_template``
    overrides the file's ``tokenizer.chat_template``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        kv_blocks: int | None = None,
        block_tokens: int = 32,
        kernels: str | None = None,
        kv_type: str = "f16",
        chat_template: str | None = None,
        model_name: str | None = None,
    ) -> None:
        self.model = Model.load(model_path, n_threads=n_threads, n_ctx=n_ctx, kv_blocks=kv_blocks,
                                block_tokens=block_tokens, kernels=kernels, kv_type=kv_type)
        md = self.model.metadata
        self.tokenizer = Tokenizer(md)
        self.eog_ids = engine.end_of_generation_ids(self.tokenizer, md)
        self.model_name = model_name or str(md.get("general.name") or os.path.basename(self.model.path))
        source = chat_template if chat_template is not None else md.get("tokenizer.chat_template")
        self._chat_template = self._template(source) if source else None

    # --- text <-> ids ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``: BOS added if the model wants one (and the text does not already
        begin with it); special-token text parsed only with ``special=True``."""
        ids = self.tokenizer.encode(text, add_special=False, special=special)
        bos = self.tokenizer.bos_id
        if add_special and self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if add_special and self.tokenizer.add_eos and self.tokenizer.eos_id is not None:
            ids.append(self.tokenizer.eos_id)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Text prompts are tokenized with special-token parsing on (as llama.cpp's server does)."""
        if isinstance(prompt, str):
            return self.tokenize(prompt, special=True)
        if isinstance(prompt, bytes):
            raise ValueError("the prompt must be text or a list of token ids, not bytes")
        ids = list(prompt)
        if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in ids):
            raise ValueError("a token-id prompt must be a list of integers")
        return [int(t) for t in ids]

    # --- chat ----------------------------------------------------------------------------

    def _template(self, source: str) -> ChatTemplate:
        def text(tid: int | None) -> str:
            return self.tokenizer.tokens[tid] if tid is not None and 0 <= tid < len(self.tokenizer) else ""

        return ChatTemplate(source, bos_token=text(self.tokenizer.bos_id), eos_token=text(self.tokenizer.eos_id))

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._chat_template

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                            tools: Sequence[Mapping[str, Any]] | None = None, add_generation_prompt: bool = True,
                            chat_template: str | None = None, **extra: Any) -> str:
        """The prompt text for ``messages`` (OpenAI's shape), as the model's template renders it."""
        tpl = self._template(chat_template) if chat_template is not None else self._chat_template
        if tpl is None:
            raise ChatTemplateError(f"{self.model_name} has no tokenizer.chat_template; pass chat_template= "
                                    "(a Jinja2 template) to LLM() or to this call")
        return tpl.render(messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra)

    # --- generation ------------------------------------------------------------------------

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, *,
               make_filter: Callable[[], TokenFilter] | None = None) -> Iterator[StreamChunk]:
        """Chunks of text (and their token ids and log-probabilities) as they are generated.

        Every chunk is safe to show: whole characters, never a possible start of a stop
        string. The last chunk of each sample has ``finish_reason`` set. With ``n > 1``
        the samples' chunks interleave (see ``index``). ``best_of > n`` cannot stream.
        Bad requests raise here, before the iterator is returned.
        """
        params = params or SamplingParams()
        if params.samples > params.n:
            raise ValueError("best_of > n cannot be streamed: the best samples are known only at the end")
        steps = engine.run(self.model, self.tokenizer, self.prompt_ids(prompt), params, eog_ids=self.eog_ids,
                           make_filter=make_filter)
        return _flatten(steps)

    def check(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's ids, after checking that the request can run (raises ``ValueError``)."""
        return engine.check(self.model, self.prompt_ids(prompt), params)

    def generate(self, prompt: Prompt, params: SamplingParams | None = None, *,
                 make_filter: Callable[[], TokenFilter] | None = None) -> list[CompletionOutput]:
        """``params.n`` finished samples (the best ``n`` of ``best_of`` by mean log-probability)."""
        params = params or SamplingParams()
        ids = self.prompt_ids(prompt)
        k = params.samples
        texts: list[list[str]] = [[] for _ in range(k)]
        tokens: list[list[int]] = [[] for _ in range(k)]
        lps: list[list[TokenLogprob]] = [[] for _ in range(k)]
        finish: list[tuple[str, str | int | None]] = [("length", None)] * k
        scores: list[tuple[float | None, int]] = [(None, 0)] * k
        for step in engine.run(self.model, self.tokenizer, ids, params, eog_ids=self.eog_ids,
                               make_filter=make_filter):
            for c in step:
                texts[c.index].append(c.text)
                tokens[c.index].extend(c.token_ids)
                if c.logprobs:
                    lps[c.index].extend(c.logprobs)
                if c.finish_reason:
                    finish[c.index] = (c.finish_reason, c.stop_reason)
                    scores[c.index] = (c.cumulative_logprob, c.scored_tokens)
        outs = [
            CompletionOutput(i, "".join(texts[i]), tokens[i], finish[i][0], finish[i][1],
                             lps[i] if params.logprobs else None, scores[i][0], scores[i][1])
            for i in range(k)
        ]
        if k > params.n:
            worst = float("-inf")
            outs.sort(key=lambda o: -(m if (m := o.mean_logprob) is not None else worst))
            outs = outs[: params.n]
            for i, o in enumerate(outs):
                o.index = i
        return outs

    def chat(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
             tools: Sequence[Mapping[str, Any]] | None = None) -> list[CompletionOutput]:
        """``generate`` on the chat template's rendering of ``messages`` (raw text out; see
        ``create_chat_completion`` for parsed tool calls and OpenAI's shape)."""
        return self.generate(self.apply_chat_template(messages, tools=tools), params)

    # --- OpenAI-shaped API ---------------------------------------------------------------

    def create_completion(self, prompt: Prompt, **fields: Any) -> Any:
        """OpenAI ``/v1/completions``: a ``Completion`` dict, or with ``stream=True`` an iterator of them."""
        from .openai_api import create_completion

        return create_completion(self, prompt, **fields)

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
                               | None = None, **fields: Any) -> Any:
        """OpenAI ``/v1/chat/completions``: a ``ChatCompletion`` dict, or with ``stream=True`` chunk dicts."""
        from .openai_api import create_chat_completion

        return create_chat_completion(self, messages, tools=tools, **fields)

    def __repr__(self) -> str:
        return f"LLM({self.model.path!r}, n_ctx={self.model.n_ctx})"
