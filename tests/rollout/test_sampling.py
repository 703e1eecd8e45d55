"""Tests of rollout/sampling.py: counter-based Gumbel-max sampling that ignores batch composition."""

import random

import pytest
import torch

from reopold_agent.rollout.backend import SamplingParams
from reopold_agent.rollout.sampling import mix32, row_keys, sample, uniform_noise

LOGITS = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.5])
N = 40_000
# chi-square critical values at p = 1e-6 (a correct sampler fails with probability 1e-6 per seed set)
CHI2_1E6 = {1: 23.9, 2: 27.6, 5: 35.9, 35: 86.0}


def _lowbias32(x):
    """Reference: the lowbias32 finaliser on unbounded Python ints, reduced mod 2**32 each step."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def _chi2(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_mix32_is_lowbias32_without_int64_overflow():
    xs = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF]
    xs += [random.Random(0).getrandbits(32) for _ in range(2000)]
    ref = [_lowbias32(x) for x in xs]
    t = torch.tensor(xs)
    assert mix32(t).tolist() == ref == [mix32(x) for x in xs]
    assert t.tolist() == xs  # not overwritten unless inplace=True
    assert len(set(ref)) == len(set(xs))  # a bijection


def test_uniforms_are_in_the_open_interval_and_keyed_only_by_row_step_and_vocab():
    keys = row_keys([0, 1, -1, 2**70 + 3, 0])
    assert keys.min() >= 0 and keys.max() < 2**32 and keys[0] == keys[4] != keys[1]
    u = uniform_noise(keys, 3, 1000)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    assert torch.equal(u[0], u[4]) and not torch.equal(u[0], u[1])
    assert torch.equal(uniform_noise(keys[2:3], 3, 1000)[0], u[2])  # alone == in a batch
    assert not torch.equal(uniform_noise(keys, 4, 1000), u)  # a new step draws new noise


def _draws(params, steps=(0,), logits=LOGITS):
    """[len(steps), N] samples: row r uses seed r at every step."""
    keys = row_keys(list(range(N)))
    logits_NV = logits.expand(N, -1)
    return torch.stack([sample(logits_NV, params, keys, t) for t in steps])


def test_sampled_frequencies_match_the_softmax():
    ids = _draws(SamplingParams(), steps=(0, 5))
    probs = LOGITS.softmax(-1)
    for row in ids:
        counts = torch.bincount(row, minlength=6).double()
        assert _chi2(counts, probs.double()) < CHI2_1E6[5]


def test_consecutive_steps_and_neighbouring_seeds_are_independent():
    ids = _draws(SamplingParams(), steps=(0, 1))
    probs = LOGITS.softmax(-1).double()
    joint_probs = (probs[:, None] * probs[None, :]).flatten()
    same_row = torch.bincount(ids[0] * 6 + ids[1], minlength=36).double()  # step 0 vs step 1
    next_row = torch.bincount(ids[0, :-1] * 6 + ids[0, 1:], minlength=36).double()  # seed r vs r+1
    assert _chi2(same_row, joint_probs) < CHI2_1E6[35]
    assert _chi2(next_row, joint_probs) < CHI2_1E6[35]


def test_temperature_and_top_k_warp_the_sampled_distribution():
    ids = _draws(SamplingParams(temperature=0.5, top_k=3))[0]
    warped = torch.full((6,), float("-inf"))
    top = LOGITS.topk(3).indices
    warped[top] = LOGITS[top] / 0.5
    counts = torch.bincount(ids, minlength=6).double()
    assert counts[warped == float("-inf")].sum() == 0
    assert _chi2(counts[top], warped.softmax(-1)[top].double()) < CHI2_1E6[2]


def test_top_p_keeps_the_token_crossing_the_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    ids = _draws(SamplingParams(top_p=0.7), logits=logits)[0]
    counts = torch.bincount(ids, minlength=4).double()
    assert counts[2:].sum() == 0  # 0.5 + 0.3 crosses 0.7: the last two are dropped
    assert _chi2(counts[:2], torch.tensor([0.625, 0.375], dtype=torch.float64)) < CHI2_1E6[1]


def test_a_row_samples_the_same_id_whatever_its_neighbours():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g)
    keys = row_keys([10, 11, 12, 13, 14])
    params = SamplingParams(temperature=0.8, top_p=0.9)
    together = sample(logits, params, keys, 7)
    alone = torch.cat([sample(logits[i:i + 1], params, keys[i:i + 1], 7) for i in range(5)])
    reordered = sample(logits.flip(0), params, keys.flip(0), 7).flip(0)
    assert together.tolist() == alone.tolist() == reordered.tolist()


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(top_k=1),
                                    SamplingParams(top_p=0.01)])
def test_greedy_and_top_k_one_and_tiny_top_p_agree(params):
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert sample(logits, params, row_keys([0, 1]), 0).tolist() == [1, 0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_suppressed_tokens_are_never_sampled_even_when_most_likely(temperature):
    logits = torch.zeros((512, 6))
    logits[:, 3] = 8.0  # token 3 dominates, but may not be sampled
    params = SamplingParams(temperature=temperature, suppress_token_ids=(3,))
    ids = sample(logits, params, row_keys(list(range(512)), "cpu"), step=0)
    assert not (ids == 3).any() and len(set(ids.tolist())) > (1 if temperature else 0)
