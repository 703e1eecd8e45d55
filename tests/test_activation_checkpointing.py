"""Activation checkpointing fires in the update of an eval-mode student, and changes no number."""

import torch

from reopold_agent.activation_checkpointing import checkpointed_layers, checkpointing_in_effect
from reopold_agent.batching import collate
from reopold_agent.policy_update import policy_update
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig
from reopold_agent.vision.loading import enable_activation_checkpointing
from tests import tiny
from tests.test_policy_update import _trajectories


def _update(checkpointing: bool) -> tuple[int, dict[str, torch.Tensor], dict[str, float], torch.nn.Module]:
    """One update of a 2-layer student in eval mode (3 micro-batches): MLP forward calls, gradients, stats.

    Calls are counted as they start: the recomputation in backward stops as soon as it has
    rebuilt the tensors backward needs, before the MLP's forward returns."""
    model = tiny.model("micro", seed=1)
    assert model.config.attention_dropout == 0.0  # dropout off whatever the mode: eval-equivalent update
    if checkpointing:
        enable_activation_checkpointing(model)
    batch = collate(_trajectories(model, tiny.model("nano", seed=2)), pad_token_id=0)
    calls = [0]
    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    grads = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    opt = Capture(model.parameters(), lr=0.0)
    stats = policy_update(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), batch, step=0,
                          settings=ObjectiveConfig(), optim=TrainLoopConfig(micro_batch_rows=2, mini_batches=1),
                          total_steps=10, backward=lambda loss: loss.backward(),
                          clip_grad=lambda m: torch.tensor(0.0))
    return calls[0], grads, stats, model


def test_checkpointing_recomputes_every_layer_in_backward_and_changes_nothing():
    plain_calls, plain_grads, plain_stats, _ = _update(checkpointing=False)
    calls, grads, stats, model = _update(checkpointing=True)
    layers, micro_batches = 2, 3
    assert plain_calls == layers * micro_batches
    assert calls == 2 * layers * micro_batches  # each layer's forward runs again in backward
    assert stats["objective/loss"] == plain_stats["objective/loss"]
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-6, atol=1e-7)
    assert not model.training and not any(m.training for m in model.modules())  # eval mode restored


def test_only_the_layers_own_flags_change_and_no_grad_forwards_are_not_checkpointed():
    model = tiny.model("micro", seed=1)
    enable_activation_checkpointing(model)
    layers = checkpointed_layers(model)
    assert len(layers) == 2
    with checkpointing_in_effect(model) as count:
        assert count == 2
        assert all(layer.training for layer in layers)
        assert not any(m.training for layer in layers for m in layer.children())  # attention, MLP: eval
        calls = [0]
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
        assert calls[0] == 1
    assert not any(layer.training for layer in layers)


def test_without_checkpointing_nothing_changes_mode():
    model = tiny.model("micro", seed=1)
    with checkpointing_in_effect(model) as count:
        assert count == 0 and not any(m.training for m in model.modules())
