"""The forward pass's state and guarantees: every tier bit-identical, the f16 KV pool, memory(),
copy on write for the last sharer, size overflows, unaligned tensors, non-finite logits, and a
forward pass that allocates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from nlm_native import Batch, KVCacheFull, Model, NumericError
from nlm_native._core import kernels

from tiny_models import TinySpec, build_hf, gguf_tensors, write_gguf

TIERS = [t for t in kernels.tiers() if t != "ref"]
rng = np.random.default_rng(21)
PROMPT = [int(t) for t in rng.integers(0, 320, size=45)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def run_script(path: Path, kernels_tier: str) -> np.ndarray:
    """Prefill, a fork, interleaved decode steps; all logits of one model on one tier."""
    m = Model.load(path, n_threads=2, n_ctx=128, kv_blocks=40, block_tokens=8, kernels=kernels_tier)
    a = m.new_sequence()
    b = Batch()
    b.add_sequence(PROMPT, 0, a, logits="all")
    out = [m.forward(b)]
    c = m.fork(a)
    for i in range(5):
        s = Batch()
        s.add(PROMPT[i], len(PROMPT) + i, a, logits=True)
        s.add(PROMPT[-i], len(PROMPT) + i, c, logits=True)
        out.append(m.forward(s))
    return np.concatenate(out)


@pytest.mark.parametrize("which", ["tiny_qwen2_path", "tiny_llama_q8_path"])
def test_every_tier_gives_the_same_logits(which: str, request: pytest.FixtureRequest) -> None:
    """Not close: identical. Every tier follows the same order of float operations (quant/kernels.h)."""
    path = request.getfixturevalue(which)
    base = run_script(path, "generic")
    for tier in TIERS:
        got = run_script(path, tier)
        assert same_bits(got, base), f"{tier}: max |diff| {np.abs(got - base).max():.3g}"


def test_f16_pool_holds_the_f16_values_of_the_f32_pool(tiny_qwen2_path: Path) -> None:
    """The f16 pool stores K and V at half the bytes, and each stored value is the f16 rounding of the
    value the f32 pool stores (layer 0, where both models see the same inputs)."""
    m16 = Model.load(tiny_qwen2_path, n_threads=2, n_ctx=64, block_tokens=8, kv_type="f16")
    m32 = Model.load(tiny_qwen2_path, n_threads=2, n_ctx=64, block_tokens=8, kv_type="f32")
    mem16, mem32 = m16.memory(), m32.memory()
    assert mem16["kv_pool_bytes"] * 2 == mem32["kv_pool_bytes"]
    hp = m16.hparams
    assert mem16["kv_bytes_per_token"] == 2 * hp["n_layer"] * hp["n_head_kv"] * hp["head_dim"] * 2
    assert mem32["kv_bytes_per_token"] == 2 * mem16["kv_bytes_per_token"]
    seqs = []
    for m in (m16, m32):
        s = m.new_sequence()
        b = Batch()
        b.add_sequence(PROMPT[:20], 0, s, logits="last")
        m.forward(b)
        seqs.append(s)
    for t in range(20):
        for values in (False, True):
            k16 = m16.read_kv(seqs[0], 0, t, values=values)
            k32 = m32.read_kv(seqs[1], 0, t, values=values)
            assert same_bits(k16, k32.astype(np.float16).astype(np.float32)), (t, values)
    with pytest.raises(ValueError, match="token 20 is outside"):
        m16.read_kv(seqs[0], 0, 20)
    with pytest.raises(ValueError, match="layer 9 is outside"):
        m16.read_kv(seqs[0], 9, 0)


def test_memory_report(tiny_llama_q8_path: Path) -> None:
    size = tiny_llama_q8_path.stat().st_size
    for tier in ["ref", *TIERS]:
        m = Model.load(tiny_llama_q8_path, n_threads=2, n_ctx=64, block_tokens=8, kernels=tier)
        mem = m.memory()
        assert set(mem) >= {"weights_mapped_bytes", "weights_repacked_bytes", "kv_pool_bytes", "kv_used_bytes",
                            "kv_bytes_per_token", "scratch_bytes"}
        assert mem["weights_mapped_bytes"] == size
        assert (mem["weights_repacked_bytes"] > 0) == (tier not in ("ref", "generic")), tier
        assert mem["kv_pool_bytes"] == m.kv_blocks * mem["kv_block_bytes"]
        assert mem["kv_used_bytes"] == 0
        s = m.new_sequence()
        b = Batch()
        b.add_sequence(PROMPT[:20], 0, s, logits="last")
        m.forward(b)
        after = m.memory()
        assert after["kv_used_bytes"] == 3 * mem["kv_block_bytes"]  # 20 tokens in blocks of 8
        assert after["scratch_bytes"] > 0
        step = Batch()
        step.add(1, 20, s, logits=True)
        m.forward(step)  # a smaller batch reuses the scratch
        assert m.memory()["scratch_bytes"] == after["scratch_bytes"]


def test_fork_where_every_sharer_writes_needs_one_copy_fewer(tiny_qwen2_path: Path) -> None:
    """Two sequences share a partial block and both write to it in one batch: the first gets a copy,
    the last writes in place. With exactly one free block, that batch must fit."""
    m = Model.load(tiny_qwen2_path, n_threads=2, n_ctx=64, kv_blocks=3, block_tokens=8)
    a = m.new_sequence()
    b = Batch()
    b.add_sequence(PROMPT[:12], 0, a, logits="none")  # blocks: 1 full + 1 partial
    m.forward(b)
    c = m.fork(a)
    assert m.kv_free_blocks == 1
    step = Batch()
    step.add(5, 12, a, logits=True)
    step.add(6, 12, c, logits=True)
    both = m.forward(step)
    assert m.kv_free_blocks == 0
    np.testing.assert_allclose(both[0], m_alone(tiny_qwen2_path, PROMPT[:12] + [5]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], m_alone(tiny_qwen2_path, PROMPT[:12] + [6]), rtol=1e-5, atol=1e-5)
    # and a third sharer that does not write keeps the block shared: then two copies are needed
    m2 = Model.load(tiny_qwen2_path, n_threads=2, n_ctx=64, kv_blocks=4, block_tokens=8)
    a = m2.new_sequence()
    b = Batch()
    b.add_sequence(PROMPT[:12], 0, a, logits="none")
    m2.forward(b)
    c, d = m2.fork(a), m2.fork(a)
    assert m2.kv_free_blocks == 2
    step = Batch()
    step.add(5, 12, a, logits=True)
    step.add(6, 12, c, logits=True)
    m2.forward(step)
    assert m2.kv_free_blocks == 0 and m2.sequence_length(d) == 12
    step = Batch()
    step.add(7, 12, d, logits=True)  # d is now the block's only owner: in place, no block needed
    m2.forward(step)


def m_alone(path: Path, tokens: list[int]) -> np.ndarray:
    return Model.load(path, n_threads=2, n_ctx=64, block_tokens=8).eval(tokens)[-1]


def test_sizes_that_overflow_are_rejected(tiny_qwen2_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit in memory's address range"):
        Model.load(tiny_qwen2_path, n_ctx=64, kv_blocks=2**31 - 1, block_tokens=2**30)
    # n_ctx + block_tokens - 1 is past INT_MAX: computed in 64 bits it is one block, too big to allocate
    with pytest.raises(MemoryError, match=r"cannot allocate 256\.00 GiB .* for the KV pool's keys"):
        Model.load(tiny_qwen2_path, n_ctx=2**31 - 1, block_tokens=2**31 - 1)
    with pytest.raises(MemoryError, match="for the KV pool"):
        Model.load(tiny_qwen2_path, n_ctx=2**31 - 1, block_tokens=1)
    with pytest.raises(ValueError, match="block_tokens must be positive"):
        Model.load(tiny_qwen2_path, n_ctx=64, block_tokens=0)


def test_unaligned_tensor_data_is_copied(tmp_path: Path) -> None:
    """general.alignment = 1 puts tensors at odd offsets: the model copies those it reads in place and
    gives the logits of the aligned file."""
    spec = TinySpec("qwen2", seed=11)
    tensors = gguf_tensors(spec, build_hf(spec))
    for qtype in (QT.F32, QT.Q8_0):
        aligned = write_gguf(tmp_path / f"a-{qtype.name}.gguf", spec, tensors, qtype)
        odd = write_gguf(tmp_path / f"u-{qtype.name}.gguf", spec, tensors, qtype, alignment=1)
        from nlm_native import gguf

        offsets = [t.offset for t in gguf.read(odd).tensors]
        assert any(o % 4 for o in offsets), "the test file should have unaligned tensors"
        for tier in ["ref", *TIERS]:
            ma = Model.load(aligned, n_threads=2, n_ctx=64, kernels=tier)
            mu = Model.load(odd, n_threads=2, n_ctx=64, kernels=tier)
            assert mu.memory()["weights_copied_bytes"] > ma.memory()["weights_copied_bytes"]
            assert same_bits(mu.eval(PROMPT[:9]), ma.eval(PROMPT[:9])), (qtype.name, tier)


def test_non_finite_logits_raise_and_undo_the_batch(tmp_path: Path) -> None:
    spec = TinySpec("llama", seed=12)
    tensors = gguf_tensors(spec, build_hf(spec))
    tensors["output_norm.weight"] = tensors["output_norm.weight"].copy()
    tensors["output_norm.weight"][3] = np.inf
    for qtype in (QT.F32, QT.Q8_0):
        path = write_gguf(tmp_path / f"inf-{qtype.name}.gguf", spec, tensors, qtype)
        for tier in ["ref", *TIERS]:
            m = Model.load(path, n_threads=2, n_ctx=64, block_tokens=8, kernels=tier)
            s = m.new_sequence()
            b = Batch()
            b.add_sequence(PROMPT[:5], 0, s, logits="none")
            m.forward(b)  # no logits asked for: nothing to check
            free = m.kv_free_blocks
            b = Batch()
            b.add_sequence(PROMPT[5:17], 5, s, logits="last")
            with pytest.raises(NumericError, match="not finite"):
                m.forward(b)
            assert m.sequence_length(s) == 5 and m.kv_free_blocks == free, tier


def test_kv_cache_full_changes_nothing(tiny_qwen2_path: Path) -> None:
    m = Model.load(tiny_qwen2_path, n_threads=2, n_ctx=64, kv_blocks=2, block_tokens=8)
    s = m.new_sequence()
    b = Batch()
    b.add_sequence(PROMPT[:10], 0, s, logits="none")
    m.forward(b)
    b = Batch()
    b.add_sequence(PROMPT[10:20], 10, s, logits="last")
    with pytest.raises(KVCacheFull):
        m.forward(b)
    assert m.sequence_length(s) == 10
    b = Batch()
    b.add_sequence(PROMPT[10:16], 10, s, logits="last")  # fits: the plan is this batch's, not the failed one's
    got = m.forward(b)
    np.testing.assert_allclose(got[0], m_alone(tiny_qwen2_path, PROMPT[:16]), rtol=1e-5, atol=1e-5)


SHIM = r"""
#include <stddef.h>
#include <stdatomic.h>
extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
static atomic_long count;
static atomic_int on;
void nlm_alloc_probe_start(void) { atomic_store(&count, 0); atomic_store(&on, 1); }
long nlm_alloc_probe_stop(void) { atomic_store(&on, 0); return atomic_load(&count); }
static void note(void) { if (atomic_load(&on)) atomic_fetch_add(&count, 1); }
void* malloc(size_t n) { note(); return __libc_malloc(n); }
void* calloc(size_t a, size_t b) { note(); return __libc_calloc(a, b); }
void* realloc(void* p, size_t n) { note(); return __libc_realloc(p, n); }
void* memalign(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
void* aligned_alloc(size_t a, size_t n) { note(); return __libc_memalign(a, n); }
int posix_memalign(void** p, size_t a, size_t n) { note(); *p = __libc_memalign(a, n); return *p ? 0 : 12; }
"""

PROBE = r"""
import sys
import numpy as np
from nlm_native import Batch, Model
path, tier = sys.argv[1], sys.argv[2]
m = Model.load(path, n_threads=2, n_ctx=256, block_tokens=8, kernels=tier)
a, b = m.new_sequence(), m.new_sequence()
def arrays(batch):
    return batch.arrays()
def run(batch, count):
    t, p, s, r = batch.arrays()
    out = np.empty((len(r), m.n_vocab), np.float32)
    if count:
        return m._core._forward_counting_allocations(t, p, s, r, out)
    m._core.forward(t, p, s, r, out)
big = Batch()
big.add_sequence(list(range(60)), 0, a, logits="all")
run(big, False)  # warm-up: scratch grown to a 60-token batch, OpenMP teams made
m.truncate(a, 0)
counts = []
for rep in range(3):
    pre = Batch()
    pre.add_sequence(list(range(40)), 0, b, logits="last")
    counts.append(run(pre, True))
    for i in range(20):  # decode steps, crossing block boundaries
        step = Batch()
        step.add(7, 40 + i, b, logits=True)
        counts.append(run(step, True))
    m.truncate(b, 0)
print(counts)
"""


def test_forward_allocates_nothing(tmp_path: Path, tiny_llama_q8_path: Path) -> None:
    """A malloc shim (LD_PRELOAD) counts every heap allocation made inside the core's forward pass:
    after a first, larger batch, prefill and decode steps make none."""
    src = tmp_path / "shim.c"
    src.write_text(SHIM)
    lib = tmp_path / "libshim.so"
    r = subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no C compiler for the malloc shim: {r.stderr[-300:]}")
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    env = dict(os.environ, LD_PRELOAD=str(lib))
    for tier in ["ref", *TIERS]:
        r = subprocess.run([sys.executable, str(script), str(tiny_llama_q8_path), tier], capture_output=True,
                           text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        counts = eval(r.stdout.strip().splitlines()[-1])
        assert counts and all(c == 0 for c in counts), f"{tier}: allocations per forward call: {counts}"
