"""``model.lora``: train a LoRA adapter on the student instead of all its weights.

The settings only; :mod:`reopold_agent.lora` wraps the student with them (through ``peft``,
imported only when a run asks for an adapter). ``model.lora: null`` is full fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config_ranges import check_ranges, ranged


@dataclass
class LoraSettings:
    """A LoRA adapter on the student's linear layers (Hu et al., 2021), as ``peft`` builds it."""

    r: int = ranged(16, ge=1)
    """Rank of the adapter's low-rank update."""
    alpha: float = ranged(32.0, gt=0)
    """Scale of the update: it is multiplied by ``alpha / r``."""
    dropout: float = ranged(0.0, ge=0, lt=1)
    """Dropout on the adapter's input during training."""
    target_modules: list[str] | str = field(default="all-linear")
    """Module names (or name suffixes) that get an adapter, e.g. ``[q_proj, v_proj]``;
    ``all-linear``: every linear layer except the output head."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("model.lora.target_modules is empty; name modules or use all-linear")
