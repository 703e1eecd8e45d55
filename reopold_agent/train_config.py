"""The configuration tree of a training run; each section is owned by the module that reads it.

``TrainConfig`` only nests sections: rollout settings live in :mod:`reopold_agent.rollout.engine`,
objective hyper-parameters in :mod:`reopold_agent.objectives.config`, sandbox limits in
:mod:`reopold_agent.sandbox`. YAML presets in ``configs/`` set values; unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .lr_schedule import LrDecay
from .objectives.config import GrpoConfig, ReopoldConfig, RklConfig
from .rollout.config import RolloutConfig
from .sandbox import SandboxConfig

ObjectiveName = Literal["reopold", "rkl", "rkl_sg", "grpo", "sft"]


@dataclass
class ModelConfig:
    """Which student and teacher to load (paths or hub ids; null = the task's embedded default)."""

    student: str | None = None
    teacher: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on a GPU, float32 on CPU."""
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    teacher_batch_rows: int = 16
    """Trajectories per teacher forward pass."""
    vocab_chunk_rows: int = 1024
    """Rows of the [rows, vocab] projection computed at once (memory vs speed)."""


@dataclass
class TaskConfig:
    """Which environment the student plays."""

    name: str = "tool_math"
    """Task name (``reopold-agent envs`` lists them)."""
    env_id: str | None = None
    """Gymnasium id overriding the task's environment, e.g. ``my_pkg.envs:MyEnv-v0``."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment constructor."""


@dataclass
class ObjectiveConfig:
    """The loss and the choices around it that the paper leaves open."""

    name: ObjectiveName = "reopold"
    reopold: ReopoldConfig = field(default_factory=ReopoldConfig)
    rkl: RklConfig = field(default_factory=RklConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    switch_fraction: float | None = 0.33
    """REOPOLD's switch step as a fraction of ``train.steps`` (paper: about one third). Set it to
    null to use ``reopold.switch_step`` instead (a training step; setting both is an error)."""
    entropy_source: Literal["behaviour", "current"] = "behaviour"
    """Entropy used for token selection (paper: unspecified). ``behaviour``: recorded at sampling
    under pi_old (free, fixed across mini-batches); ``current``: recomputed under pi_theta."""
    selection_scope: Literal["step", "minibatch"] = "minibatch"
    """Batch over which the top-beta entropy threshold and the loss normaliser are computed
    (paper: unspecified). Never per micro-batch."""
    tis_cap: float | None = None
    """Truncated importance sampling against the sampler/trainer mismatch (only with a sampler
    that runs its own copy of the model, ``rollout.backend: vllm``): each token's loss term is
    weighted by min(pi_trainer_old / pi_sampler, tis_cap), detached (verl's TIS; 2 is a common
    cap). null: off. Worth turning on when the logged ``mismatch/ratio_outside_frac`` is not
    negligible (bf16 or fp8 sampling, long sequences); with float32 on both sides the weights
    are 1 to within rounding."""

    def switch_step(self, total_steps: int) -> int:
        if self.switch_fraction is None:
            return self.reopold.switch_step
        return int(round(self.switch_fraction * total_steps))

    def __post_init__(self) -> None:
        if self.switch_fraction is not None and not 0.0 <= self.switch_fraction <= 1.0:
            raise ValueError(f"switch_fraction must be in [0, 1], got {self.switch_fraction}")
        if self.switch_fraction is not None and self.reopold.switch_step != ReopoldConfig.switch_step:
            raise ValueError(f"objective.reopold.switch_step={self.reopold.switch_step} is ignored while "
                             f"objective.switch_fraction={self.switch_fraction} is set; set objective.switch_fraction "
                             "to null to switch at that step")
        if self.entropy_source == "current" and self.selection_scope == "step":
            raise ValueError("objective.entropy_source=current needs objective.selection_scope=minibatch: the "
                             "current policy's entropies exist only per mini-batch, after the step's earlier "
                             "optimiser steps, so a threshold over the whole step cannot be taken from them")
        if self.tis_cap is not None and not self.tis_cap >= 1.0:
            raise ValueError(f"tis_cap must be >= 1 or null (off), got {self.tis_cap}")


@dataclass
class OptimConfig:
    """The training loop: batch sizes, optimiser, schedule, checkpoints."""

    steps: int = 100
    prompts_per_step: int = 8
    """P: prompts per step; each is rolled out ``rollout.group_size`` times."""
    mini_batches: int = 1
    """Optimiser steps per training step (the rollout batch is split into this many)."""
    micro_batch_rows: int = 32
    """Trajectories per forward/backward (gradient accumulation inside a mini-batch)."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    """Training steps of linear learning-rate warm-up."""
    lr_decay: LrDecay = "constant"
    """After warm-up: constant (the paper), or cosine decay to ``final_lr_ratio * lr`` at the last step."""
    final_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    """Seeds the order of the train items and the rollouts' sampling."""
    shuffle: bool = True
    """Play the train items in a seeded random order, reshuffled every pass over the split
    (false: in index order)."""
    save_every: int = 50
    """Checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    torch_threads: int | None = None
    """CPU threads for torch (null: leave torch's default)."""

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "mini_batches", "micro_batch_rows", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    every: int = 0
    """Evaluate every this many steps (0: only before training and at the end)."""
    num_problems: int = 500
    """Held-out problems (the eval split, fixed)."""
    samples: int = 4
    """Sampled attempts per problem at temperature 1 (pass@k, maj@k, sampled accuracy)."""
    greedy: bool = True
    """Also decode greedily once per problem (greedy accuracy)."""
    batch_episodes: int = 256
    """Episodes played at once during evaluation."""
    teacher: bool = False
    """Also evaluate the teacher once before training (logged as ``eval/teacher_...``)."""


@dataclass
class TrainConfig:
    """Everything a ``reopold-agent train`` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    output_dir: str = "runs/latest"
