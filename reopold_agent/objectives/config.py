"""Configuration of the objectives: REOPOLD (method sections 2-4) and the baselines (section 5).

Each objective reads exactly one of these dataclasses. They are frozen, validated in
``__post_init__`` (the error names the bad field), and derived values are properties.

Choices the paper leaves open live with whoever reads them: the entropy source (pi_old or
pi_theta), the batch the entropy quantile is taken over, and the scoring temperature are the
trainer's, because entropy and the threshold are *inputs* to the objective (see
:mod:`reopold_agent.objectives.reopold`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["ReopoldConfig", "RklConfig", "GrpoConfig", "SftConfig"]


def _check_real(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}.{name} must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")
    return float(value)


def _check_ratio_clip(owner: str, value: object) -> None:
    if value is None:
        return
    eps = _check_real(owner, "ratio_clip", value)
    if not 0.0 < eps < 1.0:
        raise ValueError(
            f"{owner}.ratio_clip must be None (off) or in (0, 1) so that rho is clipped to "
            f"[1 - eps, 1 + eps] with 1 - eps > 0, got {value!r}")


@dataclass(frozen=True)
class ReopoldConfig:
    """REOPOLD hyper-parameters (method sections 2-4; paper Table 7 defaults).

    Attributes:
        lam: mixture weight lambda in (0, 1) defining the reward floor c = log(lam) / (1 - lam).
        beta: fraction in (0, 1] of valid tokens, by highest student entropy, kept in refinement.
        switch_step: training step T_switch at which exploration (floor-drop mask) becomes
            refinement (entropy mask + floor clip); steps are 0-based, refinement when
            ``step >= switch_step``. A training step is one rollout batch, as in the paper's
            step counts: pass the same ``step`` to every optimiser step (mini-batch) of it.
            Default 100 is the paper's math run (300 steps); the paper uses about one third of
            the total steps, so set it per run (the trainer's ``objective.switch_fraction``
            does that).
        ratio_clip: None disables PPO ratio clipping (default; the paper reports it fires on
            <0.2% of tokens and does not state epsilon). A float eps uses the pessimistic
            ``min(rho * R_hat, clip(rho, 1 - eps, 1 + eps) * R_hat)``.
    """

    lam: float = 0.3
    beta: float = 0.2
    switch_step: int = 100
    ratio_clip: float | None = None

    def __post_init__(self) -> None:
        lam = _check_real("ReopoldConfig", "lam", self.lam)
        if not 0.0 < lam < 1.0:
            raise ValueError(f"ReopoldConfig.lam must be in the open interval (0, 1), "
                             f"got {self.lam!r}")
        beta = _check_real("ReopoldConfig", "beta", self.beta)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"ReopoldConfig.beta must be in (0, 1], got {self.beta!r}")
        if isinstance(self.switch_step, bool) or not isinstance(self.switch_step, numbers.Integral):
            raise ValueError(f"ReopoldConfig.switch_step must be an int, got {self.switch_step!r}")
        if self.switch_step < 0:
            raise ValueError(f"ReopoldConfig.switch_step must be >= 0, got {self.switch_step!r}")
        _check_ratio_clip("ReopoldConfig", self.ratio_clip)

    @property
    def floor(self) -> float:
        """Reward floor c(lambda) = log(lambda) / (1 - lambda); lambda = 0.3 gives -1.7200.

        Not log(lambda / (1 - lambda)), which some third-party code uses (method section 2).
        """
        return math.log(self.lam) / (1.0 - self.lam)

    def is_refinement(self, step: int) -> bool:
        """True when ``step`` (0-based training step) is in the refinement phase."""
        return step >= self.switch_step


@dataclass(frozen=True)
class RklConfig:
    """Reverse-KL on-policy distillation baselines ``rkl`` and ``rkl_sg`` (method section 1).

    Attributes:
        ratio_clip: None (default) for the plain importance-weighted surrogate, or eps in
            (0, 1) for the pessimistic PPO clip of rho (same form as REOPOLD).
    """

    ratio_clip: float | None = None

    def __post_init__(self) -> None:
        _check_ratio_clip("RklConfig", self.ratio_clip)


@dataclass(frozen=True)
class GrpoConfig:
    """GRPO baseline (method section 5): outcome reward, group-normalised advantage.

    Attributes:
        ratio_clip: PPO clip eps in (0, 1), default 0.2 (the common GRPO/PPO value).
    """

    ratio_clip: float = 0.2

    def __post_init__(self) -> None:
        if self.ratio_clip is None:
            raise ValueError("GrpoConfig.ratio_clip must be a float in (0, 1); None is not allowed")
        _check_ratio_clip("GrpoConfig", self.ratio_clip)


@dataclass(frozen=True)
class SftConfig:
    """SFT baseline on teacher outputs (method section 5); it has no hyper-parameters."""
