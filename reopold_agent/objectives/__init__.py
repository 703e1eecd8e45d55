"""Loss functions of tensors: REOPOLD and the baselines the paper compares against.

Every objective has one signature, ``fn(batch: ObjectiveInputs, *, step: int, config)
-> (loss, stats)``, where ``loss`` is a 0-dim tensor and ``stats`` a dict of plain floats
under stable ``objective/...`` keys. Pick one by name, once, at build time::

    fn = get_objective(name)
    config = OBJECTIVE_CONFIGS[name](**overrides)
    loss, stats = fn(ObjectiveInputs(...), step=k, config=config)

``reopold_loss`` is the positional convenience form of ``reopold_objective``. This package
imports torch and nothing else from the project.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

from .config import GrpoConfig, ReopoldConfig, RklConfig, SftConfig
from .grpo import group_advantages, grpo_objective
from .inputs import ObjectiveInputs
from .masks import entropy_keep_count, entropy_threshold, valid_mask
from .reopold import reopold_keep_mask, reopold_loss, reopold_objective, selected_token_count
from .rkl import rkl_objective, rkl_sg_objective
from .sft import sft_objective

__all__ = [
    "OBJECTIVES", "OBJECTIVE_CONFIGS", "ObjectiveFn", "ObjectiveInputs", "ReopoldConfig",
    "RklConfig", "GrpoConfig", "SftConfig", "get_objective", "reopold_loss", "reopold_objective",
    "rkl_objective", "rkl_sg_objective", "grpo_objective", "sft_objective", "group_advantages",
    "entropy_threshold", "entropy_keep_count", "selected_token_count", "reopold_keep_mask",
    "valid_mask",
]

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
