"""Recomputed behaviour policy, mismatch figures, truncated importance weights, and their use."""

from __future__ import annotations

import math

import pytest
import torch

from reopold_agent.batching import collate
from reopold_agent.behaviour import mismatch_stats, record_recomputed, recompute_behaviour, truncated_is_weights
from reopold_agent.objectives import ObjectiveInputs, ReopoldConfig, get_objective
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.trajectory import Trajectory
from reopold_agent.trajectory_io import trajectory_from_json, trajectory_to_json
from tests import tiny


def _traj(ids, n_prompt, logprobs, sampler="vllm"):
    n = len(ids)
    source = ["prompt"] * n_prompt + ["model"] * (n - n_prompt)
    return Trajectory(token_ids=ids, source=source, turn=[0] * n_prompt + [1] * (n - n_prompt),
                      loss_mask=[int(s == "model") for s in source],
                      logprobs=[None] * n_prompt + logprobs, messages=[], sampler=sampler,
                      entropy=[None] * n, teacher_logprobs=[None] + [-1.0] * (n - 1))


def test_mismatch_figures_by_hand():
    # |diff| = 0.1, 0.5, 1.0 (ratio 2.72: outside [0.5, 2]), 0.75 (ratio 0.47: outside)
    log_ratio = torch.tensor([0.1, -0.5, 1.0, -0.75])
    stats = mismatch_stats(log_ratio, tis_cap=2.0)
    assert stats["mismatch/logp_abs_diff_mean"] == pytest.approx((0.1 + 0.5 + 1.0 + 0.75) / 4, abs=1e-7)
    assert stats["mismatch/logp_abs_diff_max"] == pytest.approx(1.0, abs=1e-7)
    assert stats["mismatch/ratio_outside_frac"] == 0.5
    weights = [math.exp(0.1), math.exp(-0.5), 2.0, math.exp(-0.75)]
    assert stats["mismatch/tis_weight_mean"] == pytest.approx(sum(weights) / 4, abs=1e-6)
    assert stats["mismatch/tis_truncated_frac"] == 0.25
    # exactly at the band's edges is inside
    assert mismatch_stats(torch.tensor([math.log(2.0), math.log(0.5)], dtype=torch.float64))["mismatch/ratio_outside_frac"] == 0.0
    assert "mismatch/tis_weight_mean" not in mismatch_stats(log_ratio)
    assert mismatch_stats(torch.tensor([]))["mismatch/logp_abs_diff_max"] == 0.0


def test_truncated_weights_are_capped_ratios_on_valid_tokens_and_one_elsewhere():
    trainer = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    sampler = torch.tensor([[5.0, -1.5, -0.5, -2.0]])
    valid = torch.tensor([[False, True, True, True]])
    w = truncated_is_weights(trainer, sampler, valid, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(0.5), math.exp(-1.5), 2.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(trainer, sampler, valid, cap=0.0)


def test_token_weights_scale_each_tokens_term_and_leave_the_normaliser():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    base = dict(logprobs=logp, loss_mask=torch.tensor([[1, 1, 1]]), old_logprobs=logp.detach(),
                teacher_logprobs=torch.tensor([[-1.5, -1.0, -0.5]]))
    fn = get_objective("reopold")
    config = ReopoldConfig(switch_step=10)
    weights = torch.tensor([[2.0, 0.5, 1.0]])
    loss_w, _ = fn(ObjectiveInputs(**base, token_weights=weights), step=0, config=config)
    # rho = 1, R = teacher - logp = (-0.5, 1.0, 0.0), all above the floor: kept, normaliser 3
    assert loss_w.item() == pytest.approx(-(2.0 * -0.5 + 0.5 * 1.0 + 0.0) / 3, abs=1e-6)
    loss, _ = fn(ObjectiveInputs(**base), step=0, config=config)
    assert loss.item() == pytest.approx(-(-0.5 + 1.0) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="token_weights has shape"):
        ObjectiveInputs(**base, token_weights=torch.ones(1, 2))


def test_recompute_gives_the_trainers_logprobs_and_entropies_and_trajectories_keep_both():
    model = tiny.model()
    trajs = [_traj([5, 6, 7, 8, 9], 2, [-1.0, -2.0, -3.0]), _traj([10, 11, 12], 1, [-0.5, -0.25])]
    batch = collate(trajs, pad_token_id=0)
    logp_BT, ent_BT = recompute_behaviour(model, batch, micro_batch_rows=1, chunk_rows=3, device="cpu")
    with torch.no_grad():
        ref_logp, ref_ent = sequence_logprobs(model, batch.input_ids_BT, batch.attention_mask_BT, with_entropy=True)
    real = batch.attention_mask_BT.bool()
    assert torch.allclose(logp_BT[real], ref_logp[real], atol=1e-6, rtol=0)
    assert torch.allclose(ent_BT[real], ref_ent[real], atol=1e-5, rtol=0)  # entropies ~5.7: float32 rounding
    record_recomputed(trajs, batch, logp_BT, ent_BT)
    t = trajs[0]
    assert t.logprobs[2:] == [-1.0, -2.0, -3.0], "the sampler's log-probs stay"
    assert t.trainer_logprobs[:2] == [None, None] and t.entropy[:2] == [None, None]
    assert t.trainer_logprobs[2:] == pytest.approx(ref_logp[0, 2:5].tolist(), abs=1e-6)
    assert t.entropy[2:] == pytest.approx(ref_ent[0, 2:5].tolist(), abs=1e-5)
    back = trajectory_from_json(trajectory_to_json(t))
    assert back.trainer_logprobs == t.trainer_logprobs and back.sampler == "vllm"


def test_a_line_written_before_the_new_fields_reads_as_hf_sampled_without_trainer_logprobs():
    line = trajectory_to_json(_traj([5, 6, 7], 1, [-1.0, -2.0], sampler="hf"))
    import json

    record = json.loads(line)
    del record["sampler"], record["trainer_logprobs"]
    old = trajectory_from_json(json.dumps(record))
    assert old.sampler == "hf" and old.trainer_logprobs is None and "unknown_fields" not in old.info
    with pytest.raises(ValueError, match="trainer_logprobs"):
        Trajectory(**{**record, "trainer_logprobs": [None]})
