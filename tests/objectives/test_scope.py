"""loss_scope: one entropy threshold and normaliser over a scope, identical on every process."""

import threading

import pytest
import torch

from reopold_agent.objectives import (
    ObjectiveInputs, ReopoldConfig, entropy_threshold, loss_scope, reopold_keep_mask)

F32 = torch.float32  # the trainer's dtype; the scope gathers entropies as float32
CONFIG = ReopoldConfig(beta=0.3, switch_step=1)


def _batch(B=6, T=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=F32) * 3
    return ObjectiveInputs(
        logprobs=old, old_logprobs=old,
        teacher_logprobs=old - torch.randn(B, T, generator=gen, dtype=F32) * 1.5,
        entropy=torch.rand(B, T, generator=gen, dtype=F32) * 4,
        loss_mask=torch.rand(B, T, generator=gen) > 0.3)


def _rows(batch, rows):
    return ObjectiveInputs(logprobs=batch.logprobs[rows], old_logprobs=batch.old_logprobs[rows],
                           teacher_logprobs=batch.teacher_logprobs[rows],
                           entropy=batch.entropy[rows], loss_mask=batch.loss_mask[rows])


def _two_processes(name, batch, step):
    """loss_scope on rows 0-1 and 2-5 in two threads whose gather concatenates in rank order."""
    parts = [_rows(batch, slice(0, 2)), _rows(batch, slice(2, 6))]
    barrier, posted, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank):
        def gather(x):
            posted[rank] = x
            barrier.wait()
            out = torch.cat(posted)
            barrier.wait()  # both have read before the next gather overwrites
            return out
        results[rank] = loss_scope(name, parts[rank], step=step, config=CONFIG, gather=gather)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, parts


@pytest.mark.parametrize("step", [0, 1])
def test_every_process_gets_the_whole_scopes_threshold_and_normaliser(step):
    batch = _batch()
    whole = loss_scope("reopold", batch, step=step, config=CONFIG)
    (first, second), parts = _two_processes("reopold", batch, step)
    assert first == second
    assert first.normalizer == whole.normalizer
    if step == 0:
        assert first.entropy_threshold is None
    else:
        assert first.entropy_threshold.item() == whole.entropy_threshold.item() == \
            entropy_threshold(batch.entropy, batch.loss_mask, CONFIG.beta).item()
    with_tau = ObjectiveInputs(**{**batch.__dict__, "entropy_threshold": whole.entropy_threshold})
    assert whole.normalizer == reopold_keep_mask(with_tau, step=step, config=CONFIG).sum().item()
    # A process alone would select with its own rows only: the gather is what makes them agree.
    alone = loss_scope("reopold", parts[1], step=step, config=CONFIG)
    assert alone.normalizer < whole.normalizer


def test_baselines_normalise_by_all_valid_tokens_without_threshold():
    batch = _batch()
    (first, second), _ = _two_processes("rkl_sg", batch, step=5)
    assert first == second
    assert first.entropy_threshold is None
    assert first.normalizer == batch.loss_mask.sum().item()


def test_empty_scope_normalises_by_one_and_unknown_names_are_refused():
    batch = _batch()
    empty = ObjectiveInputs(**{**batch.__dict__, "loss_mask": torch.zeros_like(batch.loss_mask)})
    assert loss_scope("grpo", empty, step=0, config=None).normalizer == 1.0
    assert loss_scope("reopold", empty, step=0, config=CONFIG).normalizer == 1.0
    with pytest.raises(ValueError, match="unknown objective 'gkd'"):
        loss_scope("gkd", batch, step=0, config=None)
