"""Learning-rate multiplier per optimiser step: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math
from typing import Literal

LrDecay = Literal["constant", "cosine"]


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, decay: LrDecay = "constant",
                  final_ratio: float = 0.1) -> float:
    """Factor on the base learning rate at optimiser step ``step`` (0-based).

    Warm-up rises linearly to 1 over ``warmup_steps``; then ``"constant"`` stays at 1 and
    ``"cosine"`` falls to ``final_ratio`` at ``total_steps`` (and stays there).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if decay != "cosine":
        raise ValueError(f"unknown lr decay {decay!r}; choose 'constant' or 'cosine'")
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
