"""Full weights and optimizer state of a student that FSDP shards across processes.

Under FSDP (accelerate's FSDP2 plugin) every parameter of the student is a ``DTensor`` holding
only this process's shard. What leaves the training processes is whole: a checkpoint holds the
full weights (it loads with ``from_pretrained``) and the full optimizer state, and the sampler
generates from a full copy of the student (:mod:`reopold_agent.sharded_sampling`).

Every function here is a collective: all processes call it at the same point of the run, in the
same order. They use torch's distributed state-dict API
(``torch.distributed.checkpoint.state_dict``), which maps between shards and full tensors by
parameter name, so the saved optimizer state is keyed by parameter name (``model.layers.0...``)
rather than by position, as a single-process checkpoint's is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

OPTIMIZER_LAYOUT = "full_by_name"
"""Value of ``optimizer.pt``'s ``layout`` entry for a sharded run's checkpoint: the full state,
keyed by parameter name."""


def is_sharded(module: Any) -> bool:
    """Whether any parameter of ``module`` is a ``DTensor`` shard (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_full_weights(module: Any, *, main_only: bool) -> dict[str, Tensor]:
    """The full ``state_dict`` of a sharded ``module`` (a collective).

    Args:
        module: the sharded student (names as its own ``state_dict`` gives them).
        main_only: True: only process 0 receives the tensors, on the CPU (for a checkpoint; the
            others get an empty dict). False: every process receives them on the module's device
            (for the sampler's copy).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=main_only))


def gather_full_optimizer_state(module: Any, optimizer: Any) -> dict[str, Any]:
    """The full state of ``optimizer`` over a sharded ``module``'s parameters, keyed by parameter
    name, on the CPU of process 0 (empty elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, _unwrapped(optimizer), options=_options(cpu_offload=True))


def load_full_weights(module: Any, weights: dict[str, Tensor]) -> None:
    """Load full tensors into a sharded ``module``: each process keeps its shard (a collective;
    every process passes the same full ``weights``). Names absent from ``weights`` (a tied
    ``lm_head``) keep their values."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, weights, options=_options(strict=False))


def load_full_optimizer_state(module: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a :func:`gather_full_optimizer_state` result into ``optimizer`` (a collective; every
    process passes the same ``state``)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, _unwrapped(optimizer), state, options=_options())


def check_full_optimizer_state(state: Any, module: Any) -> str | None:
    """Why a full, name-keyed optimizer ``state`` does not fit ``module``'s parameters, or None.

    Every state entry must name a parameter of ``module`` and its tensors (beyond scalars) must
    have that parameter's full shape.
    """
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        return "no optimizer state"
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    for name, entry in state["state"].items():
        if name not in shapes:
            return f"state for parameter {name!r}, which this student does not have"
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[name]:
                return f"{key} of {name} has shape {tuple(value.shape)}, the parameter {shapes[name]}"
    return None


def _unwrapped(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)
