"""SamplingParams validation and the sampler's distributions, against Hugging Face's logits warpers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from nlm_native import Sampler, SamplingParams
from nlm_native.sampling import log_softmax, logprobs, spawn_rngs

# --- validation ------------------------------------------------------------------------------

BAD = [
    ("max_tokens", -1), ("max_tokens", 1.5), ("temperature", -0.1), ("temperature", float("nan")),
    ("top_k", -2), ("top_k", 2.0), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 1.1),
    ("repeat_penalty", 0.0), ("repeat_last_n", -2), ("frequency_penalty", 2.5), ("presence_penalty", -3),
    ("logit_bias", {1: 101}), ("logit_bias", {-1: 1.0}), ("logit_bias", [1, 2]), ("seed", "x"), ("stop", "abc"),
    ("stop", [""]), ("stop_token_ids", [-1]), ("logprobs", 1), ("top_logprobs", 21), ("n", 0), ("best_of", 0),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_values_raise_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**{name: value})


def test_relations_between_fields() -> None:
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=3, best_of=2)
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=2)
    p = SamplingParams(n=2, best_of=4, logprobs=True, top_logprobs=5)
    assert p.samples == 4
    with pytest.raises(ValueError, match="temperature"):
        p.with_(temperature=-1)


def test_logit_bias_outside_vocabulary() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Sampler(SamplingParams(logit_bias={50: 1.0}), 10)


# --- distributions ------------------------------------------------------------------------------


def hf_probs(logits: np.ndarray, *, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The distribution Hugging Face's warpers give, in its generate() order."""
    scores = torch.tensor(logits, dtype=torch.float64)[None, :]
    ids = torch.zeros((1, 1), dtype=torch.long)
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p > 0:
        warpers.append(MinPLogitsWarper(min_p))
    for w in warpers:
        scores = w(ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0),
    dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.1),
    dict(temperature=1.1, top_k=8, top_p=0.9, min_p=0.05),
]


def _chi2_p_value(counts: np.ndarray, expected: np.ndarray) -> float:
    """Upper tail of Pearson's chi-square via the Wilson-Hilferty normal approximation."""
    keep = expected > 0
    chi2 = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    z = ((chi2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_sampler_distribution_matches_hugging_face(case: dict) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, 24).astype(np.float32)
    expected = hf_probs(logits.astype(np.float64), **case)
    sampler = Sampler(SamplingParams(seed=123, **case), logits.shape[0])
    # the exact distribution the sampler draws from
    ids, probs = sampler.distribution(sampler.process(logits))
    ours = np.zeros_like(expected)
    ours[ids] = probs
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    # and its empirical frequencies
    n = 20000
    counts = np.bincount([sampler.sample(logits) for _ in range(n)], minlength=logits.shape[0]).astype(float)
    assert counts[expected == 0].sum() == 0, "sampled a token the truncation removed"
    p = _chi2_p_value(counts, expected * n)
    assert p > 1e-4, f"frequencies differ from the expected distribution (chi-square p = {p:.2e})"


def test_chi_square_check_detects_a_wrong_distribution() -> None:
    """The statistical check is able to fail: a slightly different temperature is rejected."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2, 24).astype(np.float32)
    expected = hf_probs(logits.astype(np.float64), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    s = Sampler(SamplingParams(seed=1, temperature=1.15), 24)
    counts = np.bincount([s.sample(logits) for _ in range(20000)], minlength=24).astype(float)
    assert _chi2_p_value(counts, expected * 20000) < 1e-4


def test_top_p_on_a_large_vocabulary_takes_the_fast_path_and_the_full_sort_alike() -> None:
    rng = np.random.default_rng(3)
    for scale, top_p in ((6.0, 0.9), (0.1, 0.95)):  # peaked: top 1024 suffice; flat: full sort needed
        logits = rng.normal(0, scale, 50_000).astype(np.float32)
        expected = hf_probs(logits.astype(np.float64), temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
        s = Sampler(SamplingParams(top_p=top_p), logits.shape[0])
        ids, probs = s.distribution(s.process(logits))
        ours = np.zeros_like(expected)
        ours[ids] = probs
        assert set(ids.tolist()) == set(np.flatnonzero(expected).tolist())
        np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_greedy_is_argmax_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    s = Sampler(SamplingParams(temperature=0.0), 1000)
    assert {s.sample(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_fixed_seed_reproduces_and_different_seeds_differ() -> None:
    logits = np.random.default_rng(1).normal(size=500).astype(np.float32)

    def draw(seed: int | None) -> list[int]:
        s = Sampler(SamplingParams(seed=seed, temperature=1.0), 500)
        return [s.sample(logits) for _ in range(50)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    a, b = spawn_rngs(9, 2), spawn_rngs(9, 2)
    assert [g.random() for g in a] == [g.random() for g in b]
    assert a[0].random() != a[1].random()


def test_a_top_k_past_the_vocabulary_keeps_every_token() -> None:
    """top_k >= the vocabulary is no truncation, as 0 is, even past int32 (the kernel's type)."""
    logits = np.random.default_rng(2).normal(size=300).astype(np.float32)

    def draw(top_k: int) -> list[int]:
        s = Sampler(SamplingParams(seed=3, temperature=1.0, top_k=top_k), 300)
        return [s.sample(logits) for _ in range(40)]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" included
        assert draw(10**12) == draw(2**31) == draw(300) == draw(0)
        assert draw(5) != draw(0)


def test_an_extreme_repeat_penalty_saturates_instead_of_overflowing() -> None:
    logits = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = Sampler(SamplingParams(repeat_penalty=5e-324), 4, history=[0, 1]).process(logits)
        assert x[0] == np.finfo(np.float32).max and -1e-30 < x[1] <= 0 and (x[2:] == logits[2:]).all()
        assert Sampler(SamplingParams(repeat_penalty=5e-324, temperature=0), 4, history=[0, 1]).sample(logits) == 0


# --- penalties and bias ------------------------------------------------------------------------------


def test_repeat_penalty_matches_hugging_face() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, 64).astype(np.float32)
    history = [3, 3, 10, 20, 63, 5]
    s = Sampler(SamplingParams(repeat_penalty=1.3, repeat_last_n=-1), 64, history=history)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), torch.tensor(logits)[None, :])[0].numpy()
    np.testing.assert_allclose(s.process(logits), ref, rtol=1e-6)
    # the look-back window: only the last 2 tokens are penalised
    s2 = Sampler(SamplingParams(repeat_penalty=1.3, repeat_last_n=2), 64, history=history)
    ref2 = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history[-2:]]), torch.tensor(logits)[None, :])[0]
    np.testing.assert_allclose(s2.process(logits), ref2.numpy(), rtol=1e-6)


def test_frequency_presence_penalty_and_logit_bias() -> None:
    logits = np.zeros(10, dtype=np.float32)
    s = Sampler(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, logit_bias={7: 3.0}), 10,
                history=[1, 1, 1])  # the prompt does not count for OpenAI's penalties
    for t in (2, 2, 4):
        s.accept(t)
    expected = np.zeros(10, dtype=np.float32)
    expected[2] = -(2 * 0.5 + 0.25)
    expected[4] = -(1 * 0.5 + 0.25)
    expected[7] = 3.0
    np.testing.assert_allclose(s.process(logits), expected)
    # a large bias decides a greedy choice
    g = Sampler(SamplingParams(temperature=0, logit_bias={9: 100}), 10)
    assert g.sample(np.arange(10, dtype=np.float32)[::-1].copy()) == 9


def test_masked_tokens_are_never_chosen_and_the_rest_keep_their_distribution() -> None:
    """What a grammar's mask does: -inf logits are out; the others keep their relative odds."""
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1.5, 30).astype(np.float32)
    allowed = np.zeros(30, dtype=bool)
    allowed[::3] = True
    s = Sampler(SamplingParams(seed=4), 30)
    masked = np.where(allowed, logits, -np.inf).astype(np.float32)
    counts = np.bincount([s.choose(masked) for _ in range(20000)], minlength=30).astype(float)
    assert counts[~allowed].sum() == 0
    p = np.exp(logits.astype(np.float64))
    expected = np.where(allowed, p, 0) / p[allowed].sum()
    assert _chi2_p_value(counts, expected * 20000) > 1e-4
    g = Sampler(SamplingParams(temperature=0), 30)
    assert g.choose(masked) == int(np.argmax(masked))
    with pytest.raises(ValueError, match="masked"):
        g.choose(np.full(30, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="masked"):
        s.choose(np.full(30, -np.inf, dtype=np.float32))


def test_log_softmax_and_the_kernels_logprobs() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0, -1.0], [0.5, -2.0, 7.0, 1.0, 1.0]], dtype=np.float32)
    lp = log_softmax(logits[0])
    ref = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 1).numpy()
    np.testing.assert_allclose(lp, ref[0], atol=1e-12)
    ids, top, lse = logprobs(logits, 3)
    assert ids[0].tolist() == [1, 3, 2]  # ties: lower id first
    assert ids[1].tolist() == [2, 3, 4]
    np.testing.assert_allclose(top, np.take_along_axis(ref, ids.astype(np.int64), 1), atol=1e-6)
    np.testing.assert_allclose(logits[:, 0] - lse, ref[:, 0], atol=1e-6)
    ids, top, _ = logprobs(logits, 7)  # more than there are: padded with -1
    assert ids[0].tolist()[5:] == [-1, -1] and np.isneginf(top[0, 5:]).all()


def test_apply_bitmask_matches_unpacking_the_bits() -> None:
    from nlm_native.core import ops

    rng = np.random.default_rng(5)
    for v in (1, 31, 32, 33, 100, 1000):
        for words in (max(1, (v + 31) // 32), max(1, (v + 31) // 32 - 1)):  # a full mask, and one too short
            bits = rng.integers(-(2**31), 2**31, size=words, dtype=np.int64).astype(np.int32)
            bits[0] = -1  # one all-allowed word (the fast path)
            x = rng.normal(size=v).astype(np.float32)
            allowed = np.zeros(v, dtype=bool)
            flags = np.unpackbits(bits.view(np.uint8), bitorder="little").astype(bool)
            allowed[: min(v, flags.shape[0])] = flags[:v]
            want = np.where(allowed, x, -np.inf).astype(np.float32)
            ops.apply_bitmask(x, bits)
            np.testing.assert_array_equal(x, want)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        ops.apply_bitmask(np.zeros(64, dtype=np.float32)[::2], np.array([-1], dtype=np.int32))
