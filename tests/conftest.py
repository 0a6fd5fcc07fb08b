from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TinySpec, build_hf, gguf_tensors, write_gguf  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random qwen2 GGUF (F32), shared by the tests of one session."""
    spec = TinySpec("qwen2", seed=11)
    path = tmp_path_factory.mktemp("tiny") / "qwen2.gguf"
    return write_gguf(path, spec, gguf_tensors(spec, build_hf(spec)), QT.F32)


@pytest.fixture(scope="session")
def tiny_llama_q8_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random llama GGUF (Q8_0)."""
    spec = TinySpec("llama", seed=12)
    path = tmp_path_factory.mktemp("tiny") / "llama-q8.gguf"
    return write_gguf(path, spec, gguf_tensors(spec, build_hf(spec)), QT.Q8_0)


@pytest.fixture(scope="session")
def tiny_chat_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random qwen2 GGUF (Q8_0) with a byte-level BPE tokenizer and a ChatML template."""
    spec = TinySpec("qwen2", seed=13)
    path = tmp_path_factory.mktemp("tiny") / "qwen2-chat.gguf"
    return write_gguf(path, spec, gguf_tensors(spec, build_hf(spec)), QT.Q8_0, tokenizer=True)


@pytest.fixture(scope="session")
def tiny_chat32_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_chat's shape with 32-channel heads (2 query heads, 1 kv head): what the int8 / int4 KV codecs need."""
    spec = TinySpec("qwen2", heads=2, kv_heads=1, seed=14)
    path = tmp_path_factory.mktemp("tiny") / "qwen2-chat32.gguf"
    return write_gguf(path, spec, gguf_tensors(spec, build_hf(spec)), QT.Q8_0, tokenizer=True)
