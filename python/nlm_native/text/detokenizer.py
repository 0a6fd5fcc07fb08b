"""Incremental detokenization for streaming.

A token can end in the middle of a UTF-8 character (byte-level BPE splits emoji and
CJK characters across tokens; SentencePiece byte fallback emits one byte per token).
:class:`IncrementalDetokenizer` holds such bytes back until the character is whole, so
no chunk ever carries half a character or a spurious U+FFFD, and the chunks concatenate
to exactly ``Tokenizer.decode`` of all the ids.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from .tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a stream of token ids into a stream of text pieces.

    ``push(id)`` returns the text that became complete with this token (often ``""``);
    ``flush()`` returns what is left at the end (an unfinished character decodes to
    U+FFFD, as the full decode does).

    ``at_start``: the ids begin the text, so a SentencePiece model's leading space is
    dropped as ``decode`` drops it; a continuation after a prompt keeps it (False).
    """

    def __init__(self, tokenizer: Tokenizer, *, at_start: bool = True) -> None:
        self._tok = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_space = at_start and tokenizer.strips_leading_space
        self._started = False
        self.text = ""  # everything returned so far

    def push(self, token_id: int) -> str:
        return self._emit(self._decoder.decode(self._tok.token_bytes(token_id)))

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        return self._emit(self._decoder.decode(b"", final=True))

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished character held back."""
        return len(self._decoder.getstate()[0])

    def _emit(self, piece: str) -> str:
        if piece and not self._started:
            self._started = True
            if self._strip_space and piece.startswith(" "):
                piece = piece[1:]
        self.text += piece
        return piece
