"""A frozen teacher sharded over the training processes with FSDP2 (``teacher.placement: sharded``).

Each process keeps 1/W of every transformer layer and of the backbone's own weights (embeddings,
final norm); a layer's full weights are gathered just before it runs and freed right after.
There are no gradients and no optimizer state. The output head stays whole on every process:
the chunked scoring (:func:`reopold_agent.sequence_scoring.sequence_logprobs`) reads its weight
directly, outside any module's forward, where no FSDP hook could gather it (with tied
embeddings the embedding matrix is that weight, so it stays whole too).

Every forward of the sharded teacher is a collective: all processes must score the same number
of batches, one after another. The trainer's processes hold the same number of trajectories
each step, and the ``hf`` teacher cuts them into ``model.teacher_batch_rows`` batches, so they
do. Scoring modes whose number of forwards depends on the data (packing, shared prefixes) are
switched off (:meth:`~reopold_agent.train_config.ModelConfig.scoring_layout`), and playing
episodes with the teacher is refused with this placement.
"""

from __future__ import annotations

from typing import Any

from .sequence_scoring import backbone_and_head


def shard_teacher(model: Any, mesh: Any) -> Any:
    """Shard ``model`` (a causal LM on its training device) over ``mesh`` in place; returns it.

    Args:
        model: the teacher, frozen by the caller or not (no gradient is ever taken).
        mesh: a 1-D ``DeviceMesh`` over the training processes.

    Raises:
        ValueError: the model names no transformer layer classes (``_no_split_modules``) to shard by.
    """
    from torch.distributed.fsdp import fully_shard

    backbone, head = backbone_and_head(model)
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in backbone.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no transformer layer classes (_no_split_modules) to shard by")
    whole = {p for p in head.parameters()}
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(backbone, mesh=mesh, reshard_after_forward=True, ignored_params=whole)
    return model


def teacher_mesh(device: Any, processes: int) -> Any:
    """The 1-D ``DeviceMesh`` over all training processes on ``device``'s type (cuda, cpu)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (processes,))
