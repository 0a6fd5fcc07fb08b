"""Small random LLaMA / Qwen2 models: a Hugging Face model and the same weights in GGUF.

Tensor names and metadata keys are those llama.cpp's converter writes. For
``llama`` the converter permutes the rows of Q and K so that llama.cpp's RoPE,
which rotates adjacent pairs (2i, 2i+1), matches Hugging Face's rotation of
halves (i, i + d/2); ``qwen2`` is stored unpermuted and rotated NeoX-style.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize


@dataclass(frozen=True)
class TinySpec:
    arch: str                      # "llama" or "qwen2"
    vocab: int = 320
    hidden: int = 64
    ffn: int = 160
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    rope_theta: float = 10000.0
    rope_linear: float | None = None   # linear RoPE scaling factor
    rms_eps: float = 1e-5
    tied: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def build_hf(spec: TinySpec) -> torch.nn.Module:
    """A float32 transformers model with random weights of a useful scale."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_linear is not None:
        rope = {"rope_type": "linear", "factor": spec.rope_linear, "rope_theta": spec.rope_theta}
    common = dict(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        rms_norm_eps=spec.rms_eps, max_position_embeddings=4096, tie_word_embeddings=spec.tied,
        rope_parameters=rope, attn_implementation="eager",
    )
    if spec.arch == "llama":
        model: torch.nn.Module = LlamaForCausalLM(LlamaConfig(**common))
    elif spec.arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(spec.arch)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / (p.shape[-1] ** 0.5))
    return model.eval().float()


def _permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from Hugging Face's halves layout to interleaved pairs."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(spec: TinySpec, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """float32 tensors under llama.cpp's names, Q/K permuted for llama."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not spec.tied:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(spec.layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if spec.arch == "llama":
            q, k = _permute_rope_rows(q, spec.heads), _permute_rope_rows(k, spec.kv_heads)
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[b + "attn_q.weight"] = q
        out[b + "attn_k.weight"] = k
        out[b + "attn_v.weight"] = sd[p + "self_attn.v_proj.weight"]
        out[b + "attn_output.weight"] = sd[p + "self_attn.o_proj.weight"]
        if spec.arch == "qwen2":
            for n in ("q", "k", "v"):
                out[b + f"attn_{n}.bias"] = sd[p + f"self_attn.{n}_proj.bias"]
        out[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[b + "ffn_gate.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[b + "ffn_up.weight"] = sd[p + "mlp.up_proj.weight"]
        out[b + "ffn_down.weight"] = sd[p + "mlp.down_proj.weight"]
    return out


def encode(arr: np.ndarray, qtype: QT) -> tuple[np.ndarray, QT]:
    """(bytes or array to write, its ggml type). 1-D tensors stay F32, as the converter keeps them."""
    if arr.ndim == 1 or qtype == QT.F32:
        return arr.astype(np.float32), QT.F32
    if qtype == QT.F16:
        return arr.astype(np.float16), QT.F16
    return quantize(arr, qtype), qtype


def roundtrip(arr: np.ndarray, qtype: QT) -> np.ndarray:
    """The float32 values the GGUF file holds for ``arr`` stored as ``qtype``."""
    data, t = encode(arr, qtype)
    if t == QT.F32:
        return data
    if t == QT.F16:
        return data.astype(np.float32)
    return dequantize(data, t).reshape(arr.shape).astype(np.float32)


CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def add_tiny_tokenizer(w: gguf.GGUFWriter, vocab: int) -> None:
    """A byte-level BPE vocabulary of ``vocab`` tokens: 256 bytes, letter-pair merges, 3 ChatML controls."""
    from nlm_native.text.tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    n_merges = vocab - 256 - 3
    letters = "etaoinshrdlu"
    pairs = [(x, y) for x in letters for y in letters][:n_merges]
    tokens += [x + y for x, y in pairs]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (vocab - 3) + [3, 3, 3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{x} {y}" for x, y in pairs])
    w.add_bos_token_id(vocab - 3)
    w.add_eos_token_id(vocab - 1)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)


def write_gguf(path: Path, spec: TinySpec, tensors: dict[str, np.ndarray], qtype: QT, *,
               tokenizer: bool = False, alignment: int | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), spec.arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if tokenizer:
        add_tiny_tokenizer(w, spec.vocab)
    w.add_name(f"tiny-{spec.arch}")
    w.add_context_length(4096)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.rope_linear is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope_linear)
    w.add_vocab_size(spec.vocab)
    for name, arr in tensors.items():
        data, t = encode(arr, qtype)
        if t in (QT.F32, QT.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=t)  # byte shape; the writer derives the element shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_into_hf(spec: TinySpec, model: torch.nn.Module, qtype: QT) -> None:
    """Replace the HF model's weights by the values the ``qtype`` GGUF file holds."""
    with torch.no_grad():
        for _name, p in model.named_parameters():
            arr = p.detach().numpy().astype(np.float32)
            if arr.ndim == 2:
                p.copy_(torch.from_numpy(roundtrip(arr, qtype)))
