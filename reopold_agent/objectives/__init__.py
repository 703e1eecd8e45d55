"""Loss functions of tensors: REOPOLD and the baselines the paper compares against.

Every objective has one signature, ``fn(batch: ObjectiveInputs, *, step: int, config)
-> (loss, stats)``, where ``loss`` is a 0-dim tensor and ``stats`` a dict of plain floats
under stable ``objective/...`` keys. Pick one by name, once, at build time::

    fn = get_objective(name)
    config = OBJECTIVE_CONFIGS[name](**overrides)
    loss, stats = fn(ObjectiveInputs(...), step=k, config=config)

This package imports torch and nothing else from the project.

The config dataclasses (:mod:`.config`, standard library only) load at once; the functions
load on first use (a module ``__getattr__``), so that reading and validating a run
configuration does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import GrpoConfig, ReopoldConfig, RklConfig, SftConfig

#: Exported name -> the submodule defining it (imported when the name is first used).
_LAZY = {
    "OBJECTIVES": "registry", "OBJECTIVE_CONFIGS": "registry", "ObjectiveFn": "registry",
    "get_objective": "registry", "loss_scope": "registry",
    "ObjectiveInputs": "inputs", "LossScope": "inputs",
    "group_advantages": "grpo", "grpo_objective": "grpo",
    "entropy_keep_count": "masks", "entropy_threshold": "masks", "valid_mask": "masks",
    "reopold_keep_mask": "reopold", "reopold_objective": "reopold",
    "selected_token_count": "reopold", "reopold_loss_scope": "reopold",
    "rkl_objective": "rkl", "rkl_sg_objective": "rkl", "sft_objective": "sft",
}

__all__ = ["ReopoldConfig", "RklConfig", "GrpoConfig", "SftConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
