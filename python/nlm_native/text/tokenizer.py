"""Tokenizers built from GGUF metadata alone.

* ``tokenizer.ggml.model = gpt2``: byte-level BPE (merges, byte-to-unicode map) with the
  pre-tokenizer named by ``tokenizer.ggml.pre`` (``default``/``gpt-2``, ``llama-bpe``, ``qwen2``).
* ``tokenizer.ggml.model = llama``: SentencePiece-style merging by score, spaces as U+2581,
  an optional leading space, byte fallback to ``<0xXX>`` tokens.

Special and control tokens in the input text are parsed only when asked (``special=True``).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import regex

from ..core.gguf import read as read_gguf

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_LETTERS_DIGITS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
PRE_TOKENIZERS: dict[str, str] = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama-bpe": _LETTERS_DIGITS + r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": _LETTERS_DIGITS + r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
PRE_ALIASES = {"default": "gpt2", "gpt-2": "gpt2", "llama3": "llama-bpe", "llama-v3": "llama-bpe"}


# texts of end-of-generation and fill-in-the-middle tokens across common vocabularies
END_OF_TURN = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>",
               "<|end_of_text|>", "<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>")
FILL_IN_THE_MIDDLE = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<fim_prefix>",
                      "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<fim-prefix>", "<fim-suffix>", "<fim-middle>",
                      "<PRE>", "<SUF>", "<MID>", "<|repo_name|>", "<|file_sep|>", "<\uff5cfim\u2581begin\uff5c>",
                      "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>")
CONTROL_LOOKING = END_OF_TURN + FILL_IN_THE_MIDDLE

_BPE_CACHE_WORDS = 65536
_SPM_WORD = regex.compile("\u2581*[^\u2581]+|\u2581+")
_INNER_SPACE = regex.compile("[^\u2581]\u2581")


def _longest_first(tokens: list[str], types: list[int], kinds: tuple[int, ...]) -> list[str]:
    return sorted((t for t, ty in zip(tokens, types, strict=True) if ty in kinds and t), key=len, reverse=True)


def _alternation(words: list[str]) -> regex.Pattern[str] | None:
    return regex.compile("|".join(regex.escape(w) for w in words)) if words else None


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def metadata_end_ids(metadata: Mapping[str, Any]) -> set[int]:
    """The end-of-generation ids the metadata names (eos, eot, eom)."""
    return {int(metadata[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id") if k in metadata}


class Tokenizer:
    """Text <-> token ids for a GGUF vocabulary (``from_gguf`` works on vocab-only files)."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        md = metadata
        try:
            self.model: str = md["tokenizer.ggml.model"]
            self.tokens: list[str] = md["tokenizer.ggml.tokens"]
        except KeyError as e:
            raise ValueError(f"GGUF metadata has no {e.args[0]}: not a tokenizer") from None
        n = len(self.tokens)
        self.types: list[int] = md.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * n)
        self.scores: list[float] = md.get("tokenizer.ggml.scores", [0.0] * n)
        if len(self.types) != n or len(self.scores) != n:
            raise ValueError("tokenizer.ggml.token_type / scores do not match the token list")
        self.vocab: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            self.vocab.setdefault(t, i)
        # end-of-turn and fill-in-the-middle tokens some files mark user-defined are control tokens
        # (llama.cpp overrides them the same way): never matched in plain text, decoded to nothing
        self.types = list(self.types)
        for text in CONTROL_LOOKING:
            tid = self.vocab.get(text)
            if tid is not None and self.types[tid] == TOKEN_USER_DEFINED:
                self.types[tid] = TOKEN_CONTROL
        self.bos_id: int | None = md.get("tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = md.get("tokenizer.ggml.eos_token_id")
        self.unk_id: int | None = md.get("tokenizer.ggml.unknown_token_id")
        self.add_bos: bool = bool(md.get("tokenizer.ggml.add_bos_token", self.model == "llama"))
        self.add_eos: bool = bool(md.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix: bool = bool(md.get("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        # SentencePiece models drop, on decoding, the space the encoder put before the text
        self.strips_leading_space: bool = self.model == "llama" and self.add_space_prefix
        # the ids that end generation: the metadata's eos/eot/eom and the end-of-turn control tokens
        # of common chat formats (as llama.cpp has it)
        eog = set(metadata_end_ids(md))
        for text in END_OF_TURN:
            tid = self.vocab.get(text)
            if tid is not None and self.types[tid] == TOKEN_CONTROL:
                eog.add(tid)
        self.end_of_generation_ids: frozenset[int] = frozenset(eog)
        # user-defined tokens (e.g. Qwen's <tool_call>) are always matched as whole tokens;
        # control tokens only when the caller asks for special-token parsing (llama.cpp's rule)
        self.special_tokens = _longest_first(self.tokens, self.types, (TOKEN_CONTROL, TOKEN_USER_DEFINED))
        self.user_tokens = _longest_first(self.tokens, self.types, (TOKEN_USER_DEFINED,))
        self._special_re = _alternation(self.special_tokens)
        self._user_re = _alternation(self.user_tokens)
        self._bpe_cache: dict[str, list[int]] = {}
        # Phi-3's special tokens swallow the whitespace after them (llama.cpp sets RSTRIP on them)
        name = str(md.get("general.name", "")).lower()
        self.rstrip_tokens: set[str] = set()
        if "phi-3" in name or "phi3" in name:
            self.rstrip_tokens = (set(self.special_tokens) - {"<unk>", "<s>", "<|endoftext|>"}) | {"</s>"}
        if self.model == "gpt2":
            pre = md.get("tokenizer.ggml.pre", "default")
            pre = PRE_ALIASES.get(pre, pre)
            if pre not in PRE_TOKENIZERS:
                raise ValueError(f"unsupported pre-tokenizer {pre!r} (supported: {sorted(PRE_TOKENIZERS)})")
            self.pre = pre
            self._pre_re = regex.compile(PRE_TOKENIZERS[pre])
            merges = md.get("tokenizer.ggml.merges")
            if merges is None:
                raise ValueError("gpt2 tokenizer without tokenizer.ggml.merges")
            self.ranks: dict[tuple[str, str], int] = {}
            for r, m in enumerate(merges):
                a, _, b = m.partition(" ")
                self.ranks.setdefault((a, b), r)
            self._b2u = bytes_to_unicode()
            self._u2b = {u: b for b, u in self._b2u.items()}
            self.ignore_merges = pre == "llama-bpe"  # llama 3 takes a whole word that is a token as is
        elif self.model == "llama":
            self.byte_ids = {}
            for i, t in enumerate(self.tokens):
                if self.types[i] == TOKEN_BYTE and len(t) == 6 and t.startswith("<0x"):
                    self.byte_ids[int(t[3:5], 16)] = i
            self._spm_words = not any(_INNER_SPACE.search(t) for t in self.tokens)
        else:
            raise ValueError(f"unsupported tokenizer model {self.model!r} (supported: gpt2, llama)")

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        return cls(read_gguf(path).metadata)

    def __len__(self) -> int:
        return len(self.tokens)

    # --- encode -----------------------------------------------------------------------

    def encode(self, text: str, *, add_special: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``; BOS/EOS added per metadata when ``add_special``;
        special-token text parsed as those tokens only when ``special``."""
        out: list[int] = []
        if add_special and self.add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        after_special = True  # SentencePiece: text at the start or after a special token gets the space prefix
        for piece, is_special in self._split_special(text, special):
            if is_special:
                out.append(self.vocab[piece])
                after_special = True
            elif piece:
                out.extend(self._encode_plain(piece, after_special))
                after_special = False
        if add_special and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _split_special(self, text: str, special: bool) -> list[tuple[str, bool]]:
        pattern = self._special_re if special else self._user_re
        if pattern is None:
            return [(text, False)]
        parts: list[tuple[str, bool]] = []
        pos = 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                parts.append((text[pos:m.start()], False))
            parts.append((m.group(), True))
            pos = m.end()
            if m.group() in self.rstrip_tokens:
                while pos < len(text) and text[pos] in " \t\n\r\v\f":
                    pos += 1
        if pos < len(text):
            parts.append((text[pos:], False))
        return parts

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        if self.model == "gpt2":
            out: list[int] = []
            for word in self._pre_re.findall(text):
                out.extend(self._bpe(word))
            return out
        return self._spm(text, first)

    def _bpe(self, word: str) -> list[int]:
        hit = self._bpe_cache.get(word)
        if hit is not None:
            return hit
        ids = self._bpe_uncached(word)
        if len(self._bpe_cache) >= _BPE_CACHE_WORDS:
            self._bpe_cache.clear()
        self._bpe_cache[word] = ids
        return ids

    def _bpe_uncached(self, word: str) -> list[int]:
        chars = "".join(self._b2u[b] for b in word.encode("utf-8"))
        if self.ignore_merges and chars in self.vocab:
            return [self.vocab[chars]]
        parts = list(chars)
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        out = []
        for p in parts:
            if p in self.vocab:
                out.append(self.vocab[p])
            else:  # not reachable for a consistent vocabulary: fall back to the byte characters
                out.extend(self.vocab[c] for c in p)
        return out

    def _spm(self, text: str, first: bool) -> list[int]:
        if first and self.add_space_prefix:
            text = " " + text
        text = text.replace(" ", "\u2581")
        if not self._spm_words:
            return self._spm_merge(text)
        # no token joins a character to a following U+2581, so the text merges word by word
        # exactly as it does whole; words repeat, so they are cached like BPE words
        out: list[int] = []
        for word in _SPM_WORD.findall(text):
            ids = self._bpe_cache.get(word)
            if ids is None:
                ids = self._spm_merge(word)
                if len(self._bpe_cache) >= _BPE_CACHE_WORDS:
                    self._bpe_cache.clear()
                self._bpe_cache[word] = ids
            out.extend(ids)
        return out

    def _spm_merge(self, text: str) -> list[int]:
        syms = list(text)
        # merge the adjacent pair whose concatenation is the highest-scoring token (leftmost on ties)
        prev = list(range(-1, len(syms) - 1))
        nxt = list(range(1, len(syms) + 1))
        alive = [True] * len(syms)
        heap: list[tuple[float, int, int, str]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j < len(syms):
                merged = syms[i] + syms[j]
                tid = self.vocab.get(merged)
                if tid is not None:
                    heapq.heappush(heap, (-self.scores[tid], i, j, merged))

        for i in range(len(syms) - 1):
            push(i)
        while heap:
            _, i, j, merged = heapq.heappop(heap)
            if not (alive[i] and alive[j]) or nxt[i] != j or syms[i] + syms[j] != merged:
                continue
            syms[i] = merged
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < len(syms):
                prev[nxt[j]] = i
            if prev[i] >= 0:
                push(prev[i])
            push(i)
        out: list[int] = []
        i = 0
        while i < len(syms):
            s = syms[i]
            tid = self.vocab.get(s)
            if tid is not None:
                out.append(tid)
            else:
                for b in s.encode("utf-8"):
                    if b in self.byte_ids:
                        out.append(self.byte_ids[b])
                    elif self.unk_id is not None:
                        out.append(self.unk_id)
            i = nxt[i]
        return out

    # --- decode -----------------------------------------------------------------------

    def token_bytes(self, tid: int) -> bytes:
        """The bytes token ``tid`` stands for (special tokens as their text)."""
        if not 0 <= tid < len(self.tokens):
            raise ValueError(f"token id {tid} is outside [0, {len(self.tokens)})")
        t, ty = self.tokens[tid], self.types[tid]
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN, TOKEN_UNUSED):
            return t.encode("utf-8") if ty == TOKEN_USER_DEFINED else (b"" if ty != TOKEN_UNKNOWN else t.encode())
        if self.model == "gpt2":
            if all(c in self._u2b for c in t):
                return bytes(self._u2b[c] for c in t)
            return t.encode("utf-8")
        if ty == TOKEN_BYTE:
            return bytes([int(t[3:5], 16)])
        return t.replace("\u2581", " ").encode("utf-8")

    def decode(self, ids: list[int]) -> str:
        data = b"".join(self.token_bytes(i) for i in ids)
        text = data.decode("utf-8", errors="replace")
        if self.strips_leading_space and text.startswith(" "):
            text = text[1:]
        return text
