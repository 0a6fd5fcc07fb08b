"""What the OpenAI endpoints need from below: the :class:`Backend` protocol (``LLM`` is one).

The endpoints see only this interface (text <-> ids, the chat template, checking and submitting
requests to the engine), so the layer above them (``LLM``, a server) can change freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..engine import RequestStream
from ..sampling import SamplingParams
from ..text import ChatTemplate, Tokenizer


class Backend(Protocol):
    tokenizer: Tokenizer
    model_name: str

    @property
    def chat_template(self) -> ChatTemplate | None: ...

    def tokenize(self, text: str, *, add_special: bool = True, special: bool = False) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                            tools: Sequence[Mapping[str, Any]] | None = None, add_generation_prompt: bool = True,
                            chat_template: str | None = None, **extra: Any) -> str: ...

    def check(self, prompt: str | Sequence[int], params: SamplingParams) -> list[int]: ...

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: str = "normal", timeout: float | None = None
               ) -> RequestStream: ...
