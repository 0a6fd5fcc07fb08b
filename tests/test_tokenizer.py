"""Tokenizers from GGUF metadata against llama.cpp's own test vectors and recorded prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nlm_native.tokenizer import Tokenizer

from real_model import oracle, shared_dir

VOCABS = ["gpt-2", "llama-bpe", "qwen2", "llama-spm", "phi-3"]


def vocab_dir() -> Path:
    d = shared_dir() / "fixtures" / "vocab"
    if not d.exists():
        pytest.skip(f"vocab fixtures not found at {d}")
    return d


def cases(name: str) -> list[tuple[str, list[int]]]:
    d = vocab_dir()
    inputs = (d / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (d / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) == len(outputs) > 40
    return [(s, [int(x) for x in o.split()]) for s, o in zip(inputs, outputs, strict=True)]


@pytest.mark.parametrize("name", VOCABS)
def test_llamacpp_vectors_encode_exactly(name: str) -> None:
    tok = Tokenizer.from_gguf(vocab_dir() / f"ggml-vocab-{name}.gguf")
    bad = [(text, tok.encode(text), want) for text, want in cases(name) if tok.encode(text) != want]
    assert not bad, f"{len(bad)} differ; first: {bad[0]!r}"


@pytest.mark.parametrize("name", VOCABS)
def test_decode_inverts_encode(name: str) -> None:
    tok = Tokenizer.from_gguf(vocab_dir() / f"ggml-vocab-{name}.gguf")
    for text, _ in cases(name):
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_parsed_only_when_asked() -> None:
    tok = Tokenizer.from_gguf(vocab_dir() / "ggml-vocab-qwen2.gguf")
    text = "<|im_start|>user\nhi<|im_end|>"
    parsed = tok.encode(text, special=True)
    assert parsed[0] == tok.vocab["<|im_start|>"] and parsed[-1] == tok.vocab["<|im_end|>"]
    plain = tok.encode(text)
    assert tok.vocab["<|im_start|>"] not in plain and len(plain) > len(parsed)


def test_spm_adds_bos_when_asked() -> None:
    tok = Tokenizer.from_gguf(vocab_dir() / "ggml-vocab-llama-spm.gguf")
    assert tok.encode("Hello", add_special=True)[0] == tok.bos_id == 1
    assert tok.encode("Hello")[0] != 1


def test_not_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a tokenizer"):
        Tokenizer({"general.architecture": "llama"})
    with pytest.raises(ValueError, match="unsupported tokenizer model"):
        Tokenizer({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    tok = Tokenizer.from_gguf(vocab_dir() / "ggml-vocab-gpt-2.gguf")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([len(tok)])


@pytest.mark.real_model
def test_oracle_prompts_tokenize_like_llamacpp() -> None:
    from real_model import real_model_path

    fixture: dict[str, Any] = oracle()
    tok = Tokenizer.from_gguf(real_model_path())
    for case in fixture["cases"]:
        assert tok.encode(case["text"], special=True) == case["prompt_ids"], case["name"]
        assert tok.decode(case["greedy_ids"]) == case["greedy_text"], case["name"]
