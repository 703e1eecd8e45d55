import copy

import pytest
import torch

from reopold_agent.batching import collate
from reopold_agent.policy_update import policy_update
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig
from reopold_agent.trajectory import Trajectory
from tests import tiny


def _trajectories(model, teacher, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + i
        ids = torch.randint(5, 250, (length,), generator=g).tolist()
        src = ["prompt"] * 3 + ["model"] * (length - 5) + ["tool"] * 2
        t = torch.tensor([ids])
        with torch.no_grad():
            lp, ent = sequence_logprobs(model, t, torch.ones_like(t), with_entropy=True)
            tlp, _ = sequence_logprobs(teacher, t, torch.ones_like(t))
        mask = [int(s == "model") for s in src]
        out.append(Trajectory(
            token_ids=ids, source=src, turn=[0] * length, loss_mask=mask, messages=[], prompt_id=f"p{i // 2}",
            logprobs=[v if m else None for v, m in zip(lp[0].tolist(), mask)],
            entropy=[v if m else None for v, m in zip(ent[0].tolist(), mask)],
            teacher_logprobs=[None] + tlp[0, 1:].tolist(), reward=float(i % 2),
        ))
    return out


def _grads_after(micro_rows, name, step, scope="minibatch"):
    model = tiny.model("nano", seed=1)
    teacher = tiny.model("nano", seed=2)
    batch = collate(_trajectories(model, teacher), pad_token_id=0)
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    opt = Capture(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = ObjectiveConfig(name=name, selection_scope=scope, switch_fraction=None)
    settings.reopold = type(settings.reopold)(switch_step=2)
    stats = policy_update(model, opt, sched, batch, step=step, settings=settings,
                          optim=TrainLoopConfig(micro_batch_rows=micro_rows, mini_batches=1), total_steps=10,
                          backward=lambda loss: loss.backward(), clip_grad=lambda m: torch.tensor(0.0))
    return captured, stats


@pytest.mark.parametrize("name,step", [("reopold", 0), ("reopold", 5), ("rkl_sg", 0), ("grpo", 0), ("sft", 0)])
def test_micro_batches_do_not_change_the_gradient(name, step):
    """Threshold and normaliser are fixed over the mini-batch, so accumulation is exact."""
    full, stats = _grads_after(6, name, step)
    split, _ = _grads_after(2, name, step)
    assert full and set(full) == set(split)
    for key in full:
        torch.testing.assert_close(full[key], split[key], atol=1e-6, rtol=1e-5)
    assert "train/grad_norm" in stats


def test_refinement_selects_top_beta_of_the_minibatch():
    _, stats = _grads_after(2, "reopold", 5)
    assert stats["objective/phase"] == 1.0
    # per-micro-batch selected ratios vary, but the mean is near beta over the whole batch
    assert 0.0 < stats["objective/selected_ratio"] < 0.6


def _stats_with_stale_behaviour(micro_rows):
    """Step stats when the rollouts came from another policy (rho != 1), split into micro-batches."""
    model, teacher = tiny.model("nano", seed=1), tiny.model("nano", seed=2)
    batch = collate(_trajectories(tiny.model("nano", seed=3), teacher), pad_token_id=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return policy_update(model, opt, sched, batch, step=0, settings=ObjectiveConfig(name="rkl_sg"),
                         optim=TrainLoopConfig(micro_batch_rows=micro_rows, mini_batches=1), total_steps=10,
                         backward=lambda loss: loss.backward(), clip_grad=lambda m: torch.tensor(0.0))


def test_ratio_statistics_cover_the_whole_step_however_it_is_split():
    """rho's max is the step's max and its shares are over all valid tokens, not means of micro-batch values."""
    whole, split = _stats_with_stale_behaviour(6), _stats_with_stale_behaviour(1)
    assert whole["objective/rho_max"] > 1.2 and 0.0 < whole["objective/rho_off_frac"] < 1.0
    for key in ("objective/rho_max", "objective/rho_mean", "objective/rho_off_frac", "objective/num_valid",
                "objective/reward_mean", "objective/reward_p10", "objective/reward_p50", "objective/reward_p90",
                "objective/entropy_mean", "objective/ratio_clip_frac", "objective/loss"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    assert not any(key.endswith("_values") for key in whole)


def test_mini_batches_split_exactly_or_refuse():
    """8 rows into 4 mini-batches: 4 disjoint parts of 2 covering every row. 6 rows into 4 is
    refused (``Tensor.chunk`` would return 3 parts: one optimiser step fewer than configured)."""
    from reopold_agent.policy_update import split_exactly

    parts = split_exactly(8, 4, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [2, 2, 2, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(8))
    with pytest.raises(ValueError, match="6 rows cannot be split into 4 equal mini-batches"):
        split_exactly(6, 4)


def test_mini_batches_split_by_prompt_keep_each_group_whole():
    """Six groups of 3 rows into 3 mini-batches: each holds two whole groups, in a seeded
    order, and every row once. Unequal groups still give equal parts (a group may then span two)."""
    from reopold_agent.policy_update import split_exactly

    groups = [[g * 3 + r for r in range(3)] for g in range(6)]
    parts = split_exactly(18, 3, generator=torch.Generator().manual_seed(0), groups=groups)
    assert [len(p) for p in parts] == [6, 6, 6]
    assert sorted(torch.cat(parts).tolist()) == list(range(18))
    for part in parts:
        assert {b // 3 for b in part.tolist()} and all(
            set(groups[g]) <= set(part.tolist()) for g in {b // 3 for b in part.tolist()})
    again = split_exactly(18, 3, generator=torch.Generator().manual_seed(0), groups=groups)
    other = split_exactly(18, 3, generator=torch.Generator().manual_seed(1), groups=groups)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))
    uneven = split_exactly(6, 2, generator=torch.Generator().manual_seed(0), groups=[[0, 1, 2, 3], [4], [5]])
    assert [len(p) for p in uneven] == [3, 3] and sorted(torch.cat(uneven).tolist()) == list(range(6))


def test_prompt_split_needs_mini_batches_that_divide_each_process_prompts():
    """12 prompts x 2 rollouts over 2 processes: 12 rows each, which 4 mini-batches divide, but
    not the 6 prompts each process plays, as whole-group mini-batches need."""
    from reopold_agent.config_loading import ConfigError, from_dict
    from reopold_agent.train_config import TrainConfig, check_batch_shape

    data = {"train": {"prompts_per_step": 12, "mini_batches": 4}, "rollout": {"group_size": 2}}
    check_batch_shape(from_dict(TrainConfig, data), processes=2)
    data["train"]["mini_batch_split"] = "prompts"
    config = from_dict(TrainConfig, data)
    with pytest.raises(ValueError, match="train.mini_batches=4 does not divide the 6 prompts each of the 2"):
        check_batch_shape(config, processes=2)
    data["train"]["mini_batches"] = 3
    check_batch_shape(from_dict(TrainConfig, data), processes=2)
    with pytest.raises(ConfigError, match="mini_batch_split"):
        from_dict(TrainConfig, {"train": {"mini_batch_split": "groups"}})


def _optimiser_steps(rows, mini_batches):
    model, teacher = tiny.model("nano", seed=1), tiny.model("nano", seed=2)
    batch = collate(_trajectories(model, teacher, n=rows), pad_token_id=0)
    steps = []

    class Count(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)

    opt = Count(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    policy_update(model, opt, sched, batch, step=0, settings=ObjectiveConfig(name="rkl_sg"),
                  optim=TrainLoopConfig(micro_batch_rows=1, mini_batches=mini_batches), total_steps=10,
                  backward=lambda loss: loss.backward(), clip_grad=lambda m: torch.tensor(0.0),
                  generator=torch.Generator().manual_seed(0))
    return len(steps), sched.last_epoch


def test_every_configured_optimiser_step_runs_or_the_update_refuses():
    """8 rows in 4 mini-batches: four optimiser and scheduler steps. 6 rows in 4 is refused,
    where ``chunk`` ran 3 steps and let the learning-rate schedule drift."""
    assert _optimiser_steps(8, 4) == (4, 4)
    with pytest.raises(ValueError, match="6 rows cannot be split into 4"):
        _optimiser_steps(6, 4)


@pytest.mark.parametrize("source", ["behaviour", "current"])
def test_refinement_selects_by_the_configured_entropy_source(source):
    """``current`` thresholds the trained policy's own entropies; the recorded behaviour
    entropies of the batch stay what the sampler recorded."""
    from reopold_agent.objectives import entropy_threshold

    model, teacher = tiny.model("nano", seed=1), tiny.model("nano", seed=2)
    batch = collate(_trajectories(tiny.model("nano", seed=3), teacher), pad_token_id=0)
    recorded_BT = batch.behaviour_entropy_BT.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = ObjectiveConfig(name="reopold", entropy_source=source, switch_fraction=None)
    settings.reopold = type(settings.reopold)(switch_step=0)
    stats = policy_update(model, opt, sched, batch, step=0, settings=settings,
                          optim=TrainLoopConfig(micro_batch_rows=6, mini_batches=1), total_steps=10,
                          backward=lambda loss: loss.backward(), clip_grad=lambda m: torch.tensor(0.0))
    with torch.no_grad():
        _, current_BT = sequence_logprobs(model, batch.input_ids_BT, batch.attention_mask_BT, with_entropy=True)
    beta = settings.reopold.beta
    entropy_BT = {"behaviour": recorded_BT, "current": current_BT}
    expected = {name: entropy_threshold(ent_BT, batch.valid_BT, beta) for name, ent_BT in entropy_BT.items()}
    assert expected["behaviour"].item() != pytest.approx(expected["current"].item(), abs=1e-3)
    assert stats["objective/entropy_threshold"] == pytest.approx(expected[source].item(), abs=1e-5)
    selected = (entropy_BT[source] >= expected[source]) & batch.valid_BT
    assert stats["objective/num_selected"] == selected.sum().item()
    assert torch.equal(batch.behaviour_entropy_BT, recorded_BT)
