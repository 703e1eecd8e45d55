"""A step's statistics over all its micro-batches and processes (reopold_agent.step_stats)."""

import math

import pytest
import torch

from reopold_agent.step_stats import StepStats


def _micro(values, selected, clipped, rho_max, grad_norm=None):
    values = torch.tensor(values, dtype=torch.float64)
    stats = {"objective/num_valid": float(len(values)), "objective/num_selected": float(selected),
             "objective/reward_mean": float(values.mean()), "objective/reward_p50": float(values.median()),
             "objective/reward_values": values, "objective/ratio_clip_frac": clipped / max(selected, 1),
             "objective/rho_max": rho_max, "objective/loss": 0.5 * len(values), "objective/phase": 1.0}
    return stats


class AllGather:
    """Two processes' gathers, in call order: rank 1 runs first and records what it sends;
    rank 0's gather then returns [its own, rank 1's] concatenated, as an all-gather does."""

    def __init__(self):
        self.sent = []

    def rank1(self, x):
        self.sent.append(x)
        return x  # rank 1's own result is not looked at

    def rank0(self, x):
        return torch.cat([x, self.sent.pop(0)])


def test_statistics_are_those_of_all_tokens_not_means_of_micro_batches():
    a, b = _micro([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 4, 1, 1.1), _micro([10.0, 20.0], 2, 2, 1.7)
    stats = StepStats()
    stats.add(a)
    stats.add(b)
    stats.add({"train/grad_norm": 2.0})
    stats.add({"train/grad_norm": 4.0})
    out = stats.result(optimizer_steps=2)
    assert out["objective/num_valid"] == 8.0 and out["objective/num_selected"] == 6.0
    assert out["objective/reward_mean"] == pytest.approx(51 / 8)  # not (3.5 + 15) / 2
    assert out["objective/reward_p50"] == 5.0  # nearest rank over all 8 values, not a mean of medians
    assert (out["objective/reward_p10"], out["objective/reward_p90"]) == (2.0, 10.0)
    assert out["objective/ratio_clip_frac"] == pytest.approx(3 / 6)  # weighted by selected tokens
    assert out["objective/selected_ratio"] == pytest.approx(6 / 8)
    assert out["objective/rho_max"] == 1.7 and out["train/grad_norm"] == 3.0 and out["objective/phase"] == 1.0
    assert out["objective/loss"] == pytest.approx((3.0 + 1.0) / 2)  # micro-batch losses add up, per optimiser step
    assert "objective/reward_values" not in out


def test_two_processes_agree_with_one_process_holding_all_micro_batches():
    micro = [_micro([1.0, -2.0, 3.0], 2, 0, 1.0), _micro([0.5], 1, 1, 2.5), _micro([7.0, 8.0, -9.0, 4.0], 3, 1, 1.2)]
    single = StepStats()
    for m in micro:
        single.add(m)
    rank0, rank1 = StepStats(), StepStats()
    rank0.add(micro[0])
    rank1.add(micro[1])
    rank1.add(micro[2])
    gather = AllGather()
    rank1.result(gather.rank1)
    together, alone = rank0.result(gather.rank0), single.result()
    assert together.keys() == alone.keys()
    for key in alone:
        assert together[key] == pytest.approx(alone[key]), key


def test_an_undefined_mean_stays_nan_and_empty_values_give_zero_percentiles():
    stats = StepStats()
    stats.add({"objective/num_valid": 0.0, "objective/entropy_threshold": math.nan,
               "objective/reward_values": torch.zeros(0)})
    out = stats.result()
    assert math.isnan(out["objective/entropy_threshold"]) and out["objective/reward_p50"] == 0.0
