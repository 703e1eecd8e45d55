"""Activation checkpointing that fires during the update while the student stays in eval mode.

transformers checkpoints a decoder layer only when that layer has ``gradient_checkpointing``
set, ``self.training`` is true and gradients are enabled. The student stays in eval mode all
along (sampling, scoring and the update alike, so no dropout ever runs), so a plain
``activation_checkpointing_enable()`` never fired. :func:`checkpointing_in_effect` sets the
``training`` flag of the checkpointed layers themselves, and nothing else: their attention and
MLP submodules, where the dropout of the Qwen families lives, stay in eval mode, so the update
computes exactly what it computes without checkpointing, only recomputing each layer's
activations in the backward pass instead of keeping them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers.modeling_layers import GradientCheckpointingLayer


def checkpointed_layers(model: torch.nn.Module) -> list[GradientCheckpointingLayer]:
    """The layers of ``model`` (bare or wrapped by an engine) whose checkpointing is switched on."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


@contextlib.contextmanager
def checkpointing_in_effect(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the checkpointed layers of ``model`` recompute their activations in
    backward (forwards under ``torch.no_grad`` are unaffected); yields how many layers that is.

    Only the layers' own ``training`` flags change (restored on exit); every other module keeps
    its mode, so no dropout is switched on.
    """
    layers = [m for m in checkpointed_layers(model) if not m.training]
    for layer in layers:
        layer.training = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.training = False
