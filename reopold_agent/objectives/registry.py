"""The objectives by name: ``OBJECTIVES``, ``OBJECTIVE_CONFIGS`` and :func:`get_objective`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

from .config import GrpoConfig, ReopoldConfig, RklConfig, SftConfig
from .grpo import grpo_objective
from .reopold import reopold_objective
from .rkl import rkl_objective, rkl_sg_objective
from .sft import sft_objective

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
