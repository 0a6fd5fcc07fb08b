"""Tokenizers from GGUF metadata against llama.cpp's own test vectors and recorded prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nlm_native.text.tokenizer import Tokenizer

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


# Recorded with llama-cpp-python 0.3.36 (llama.cpp's tokenizer) on the fixture vocabularies:
# Llama(path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=False / True).
# They pin down which special-looking tokens plain text may contain: user-defined ones always,
# control ones only with special=True, and end-of-turn tokens a file marks user-defined (phi-3's
# "</s>") count as control, as llama.cpp overrides them.
LLAMACPP_SPECIAL = {
    "phi-3": {"a </s> b": ([263, 1533, 29879, 29958, 289], [263, 29871, 2, 289]),
              "x<|end|>y": ([921, 29966, 29989, 355, 29989, 29958, 29891], [921, 32007, 343]),
              "<|assistant|> hi": ([529, 29989, 465, 22137, 29989, 29958, 7251], [32001, 7251])},
    "qwen2": {"<|im_end|>x": ([27, 91, 318, 6213, 91, 29, 87], [151645, 87])},
    "llama-bpe": {"<|eot_id|> ok": ([27, 91, 68, 354, 851, 91, 29, 5509], [128009, 5509]),
                  "<|begin_of_text|>hi": ([27, 91, 7413, 3659, 4424, 91, 29, 6151], [128000, 6151])},
    "llama-spm": {"</s> x": ([1533, 29879, 29958, 921], [2, 29871, 921]),
                  "<s> y": ([529, 29879, 29958, 343], [1, 29871, 343])},
}


@pytest.mark.parametrize("name", sorted(LLAMACPP_SPECIAL))
def test_special_token_matching_like_llamacpp(name: str) -> None:
    tok = Tokenizer.from_gguf(vocab_dir() / f"ggml-vocab-{name}.gguf")
    for text, (plain, special) in LLAMACPP_SPECIAL[name].items():
        assert tok.encode(text) == plain, text
        assert tok.encode(text, special=True) == special, text


def test_user_defined_tokens_are_always_whole_tokens() -> None:
    """Qwen 2.5's <tool_call> is user-defined: llama.cpp takes it as one token even without special=True."""
    from nlm_native.core.fetch import fetch

    try:
        tok = Tokenizer.from_gguf(fetch())
    except OSError as e:
        pytest.skip(f"real model not available: {e}")
    assert tok.encode("a <tool_call> b") == [64, 220, 151657, 293]  # llama.cpp's ids (recorded as above)
    assert tok.encode("<|im_start|>") != [151644] and tok.encode("<|im_start|>", special=True) == [151644]
