"""The update with shared-prefix scoring gives today's gradient on the same batch, every objective."""

import pytest
import torch

from reopold_agent.batching import collate
from reopold_agent.policy_update import policy_update
from reopold_agent.sequence_scoring import SequenceScorer, sequence_logprobs
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig
from reopold_agent.trajectory import Trajectory
from tests import tiny


def _groups(model, teacher, prompts=3, group_size=3, seed=0):
    """Rollouts of ``prompts`` prompts, ``group_size`` each: prompt, model tokens, a tool turn, model tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in range(prompts):
        prompt = torch.randint(5, 250, (7 + 3 * p,), generator=g).tolist()
        for r in range(group_size):
            own = [int(n) for n in torch.randint(2, 9, (3,), generator=g)]
            ids = prompt + torch.randint(5, 250, (sum(own),), generator=g).tolist()
            src = ["prompt"] * len(prompt) + ["model"] * own[0] + ["tool"] * own[1] + ["model"] * own[2]
            t = torch.tensor([ids])
            with torch.no_grad():
                lp, ent = sequence_logprobs(model, t, torch.ones_like(t), with_entropy=True)
                tlp, _ = sequence_logprobs(teacher, t, torch.ones_like(t))
            mask = [int(s == "model") for s in src]
            out.append(Trajectory(
                token_ids=ids, source=src, turn=[0] * len(ids), loss_mask=mask, messages=[], prompt_id=f"p{p}",
                logprobs=[v if m else None for v, m in zip(lp[0].tolist(), mask)],
                entropy=[v if m else None for v, m in zip(ent[0].tolist(), mask)],
                teacher_logprobs=[None] + tlp[0, 1:].tolist(), reward=float((p + r) % 2),
            ))
    return out


def _update(name, step, *, shared, micro_rows, mini_batches, split="rows"):
    model, teacher = tiny.model("nano", seed=1), tiny.model("nano", seed=2)
    trajs = _groups(tiny.model("nano", seed=3), teacher)
    batch = collate(trajs, pad_token_id=0)
    scorer = SequenceScorer(model, shared_prefix=shared)
    captured = []

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    opt = Capture(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    settings = ObjectiveConfig(name=name, switch_fraction=None)
    settings.reopold = type(settings.reopold)(switch_step=2)
    stats = policy_update(scorer, opt, sched, batch, step=step, settings=settings,
                          optim=TrainLoopConfig(micro_batch_rows=micro_rows, mini_batches=mini_batches,
                                                mini_batch_split=split), total_steps=10,
                          backward=lambda loss: loss.backward(), clip_grad=lambda m: torch.tensor(0.0),
                          generator=torch.Generator().manual_seed(0))
    return captured, stats


@pytest.mark.parametrize("name,step", [("reopold", 0), ("reopold", 5), ("rkl", 0), ("rkl_sg", 0), ("grpo", 0),
                                       ("sft", 0)])
@pytest.mark.parametrize("micro_rows,mini_batches", [(9, 1), (4, 1), (3, 3)])
def test_shared_prefix_update_has_the_unshared_gradient(name, step, micro_rows, mini_batches):
    shared, shared_stats = _update(name, step, shared=True, micro_rows=micro_rows, mini_batches=mini_batches)
    plain, plain_stats = _update(name, step, shared=False, micro_rows=micro_rows, mini_batches=mini_batches)
    assert len(shared) == len(plain) == mini_batches
    for a, b in zip(shared, plain):
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=1e-4)
    assert shared_stats["objective/num_valid"] == plain_stats["objective/num_valid"]
    assert shared_stats["objective/loss"] == pytest.approx(plain_stats["objective/loss"], rel=1e-5, abs=1e-7)


def test_each_micro_batch_encodes_each_prompt_once(monkeypatch):
    """One mini-batch of 9 rows (3 prompts x 3) in micro-batches of 3 rows: the rows are ordered
    by prompt first, so every micro-batch is one group, scored with its prompt encoded once."""
    import reopold_agent.sequence_scoring as sequence_scoring

    calls = []
    real = sequence_scoring.groups_logprobs
    monkeypatch.setattr(sequence_scoring, "groups_logprobs",
                        lambda model, groups, prefix_lens, **kw: calls.append(
                            ([len(rows) for rows in groups], prefix_lens)) or real(model, groups, prefix_lens, **kw))
    _update("reopold", 0, shared=True, micro_rows=3, mini_batches=1)
    assert sorted(calls) == [([3], [7]), ([3], [10]), ([3], [13])]


@pytest.mark.parametrize("name", ["reopold", "grpo"])
def test_prompt_split_mini_batches_encode_each_prompt_once_with_the_unshared_gradient(name, monkeypatch):
    """3 prompts x 3 rollouts in 3 mini-batches split by prompt: each optimiser step trains on one
    whole group, scored in one forward pair with its prompt encoded once, and its gradient is the
    unshared computation's on the same split."""
    import reopold_agent.sequence_scoring as sequence_scoring

    calls = []
    real = sequence_scoring.groups_logprobs
    monkeypatch.setattr(sequence_scoring, "groups_logprobs",
                        lambda model, groups, prefix_lens, **kw: calls.append(
                            ([len(rows) for rows in groups], prefix_lens)) or real(model, groups, prefix_lens, **kw))
    shared, _ = _update(name, 0, shared=True, micro_rows=9, mini_batches=3, split="prompts")
    assert sorted(calls) == [([3], [7]), ([3], [10]), ([3], [13])]
    plain, _ = _update(name, 0, shared=False, micro_rows=9, mini_batches=3, split="prompts")
    assert len(shared) == len(plain) == 3
    for a, b in zip(shared, plain):
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=1e-4)


def test_recomputed_behaviour_is_the_same_with_shared_prefixes():
    from reopold_agent.behaviour import recompute_behaviour

    model = tiny.model("nano", seed=1)
    batch = collate(_groups(model, tiny.model("nano", seed=2)), pad_token_id=0)
    plain = recompute_behaviour(model, batch, micro_batch_rows=4, chunk_rows=8, device="cpu")
    shared = recompute_behaviour(SequenceScorer(model, shared_prefix=True), batch, micro_batch_rows=4, chunk_rows=8,
                                 device="cpu")
    valid = batch.valid_BT
    for a, b in zip(shared, plain):
        torch.testing.assert_close(a[valid], b[valid], atol=2e-5, rtol=1e-5)
