"""The objectives by name: ``OBJECTIVES``, ``OBJECTIVE_CONFIGS``, :func:`get_objective` and
:func:`loss_scope`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

from .config import GrpoConfig, ReopoldConfig, RklConfig, SftConfig
from .grpo import grpo_objective
from .inputs import Gather, LossScope, ObjectiveInputs
from .reopold import reopold_loss_scope, reopold_objective
from .rkl import rkl_objective, rkl_sg_objective
from .sft import sft_objective
from .surrogate import valid_token_scope

ObjectiveFn = Callable[..., tuple[Tensor, dict[str, float]]]

#: Objective name -> ``fn(batch, *, step, config) -> (loss, stats)``. Read-only.
OBJECTIVES: Mapping[str, ObjectiveFn] = MappingProxyType({
    "reopold": reopold_objective,
    "rkl": rkl_objective,
    "rkl_sg": rkl_sg_objective,
    "grpo": grpo_objective,
    "sft": sft_objective,
})

#: Objective name -> the config dataclass its function expects. Read-only.
OBJECTIVE_CONFIGS: Mapping[str, type] = MappingProxyType({
    "reopold": ReopoldConfig,
    "rkl": RklConfig,
    "rkl_sg": RklConfig,
    "grpo": GrpoConfig,
    "sft": SftConfig,
})


def get_objective(name: str) -> ObjectiveFn:
    """The objective registered as ``name``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the valid names.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid names: "
                         f"{', '.join(sorted(OBJECTIVES))}") from None


def loss_scope(name: str, batch: ObjectiveInputs, *, step: int, config: object,
               gather: Gather = lambda x: x) -> LossScope:
    """The entropy threshold and normaliser of objective ``name`` over the scope ``batch``.

    ``batch`` holds the scope's tensors (a mini-batch or a whole step of this process);
    ``gather`` concatenates a 1-D tensor across processes, so the values cover all of them.
    REOPOLD selects tokens (:func:`~.reopold.reopold_loss_scope`); the other objectives keep
    every valid token (:func:`~.surrogate.valid_token_scope`).

    Raises:
        ValueError: if ``name`` is unknown.
    """
    get_objective(name)
    if name == "reopold":
        return reopold_loss_scope(batch, step=step, config=config, gather=gather)
    return valid_token_scope(batch, gather)
