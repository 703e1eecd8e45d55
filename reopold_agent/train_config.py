"""The configuration tree of a training run; each section is owned by the module that reads it.

``TrainConfig`` only nests sections: rollout settings live in :mod:`reopold_agent.rollout.engine`,
objective hyper-parameters in :mod:`reopold_agent.objectives.config`, sandbox limits in
:mod:`reopold_agent.sandbox`. YAML presets in ``configs/`` set values; unknown keys are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .config_ranges import FieldError, check_ranges, ranged
from .lora_config import LoraSettings
from .lr_schedule import LrDecay
from .objectives.config import GrpoConfig, ReopoldConfig, RklConfig
from .rollout.config import RolloutConfig
from .sandbox import SandboxConfig
from .teacher_config import TeacherConfig, check_placement
from .wandb_logging import LoggingConfig

ObjectiveName = Literal["reopold", "rkl", "rkl_sg", "grpo", "sft"]


@dataclass
class ModelConfig:
    """Which student and teacher to load (paths or hub ids; null = the task's embedded default)."""

    student: str | None = None
    teacher: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on a GPU, float32 on CPU."""
    device: str = "auto"
    """Where the models run: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (the GPU when one is
    visible, else the CPU). Under a multi-process launcher each process takes its own GPU, so
    only ``auto`` and ``cuda`` apply there."""
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    teacher_batch_rows: int = ranged(16, ge=1)
    """Trajectories per teacher forward pass."""
    vocab_chunk_rows: int = ranged(1024, ge=1)
    """Rows of the [rows, vocab] projection computed at once (memory vs speed)."""
    packed_sequences: bool = True
    """Teacher scoring and the update run the rows' real tokens packed into fewer rows
    (positions restart per sequence, attention stays within it) wherever that saves compute:
    the same log-probs and gradients up to float rounding, without the padding. Rows with
    images, and models sharded over the processes (:meth:`scoring_layout`), run padded."""
    shared_prefix: bool = True
    """Rollouts of one prompt get their shared prompt encoded once (its keys and values reused
    by each rollout): in the HF decode loop's prefill, by the ``hf`` teacher, and in the update
    wherever rollouts of a prompt share a micro-batch (all of them with ``train.mini_batches:
    1`` or ``train.mini_batch_split: prompts``). The same tokens, log-probs and gradients up to float rounding. Text models only, and
    not for a model sharded over the processes (:meth:`scoring_layout`)."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter on the student (``{r, alpha, dropout, target_modules}``, through
    ``peft``) instead of all its weights; null: full fine-tuning."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise FieldError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def scoring_layout(self, *, sharded: bool) -> tuple[bool, bool]:
        """(packed, shared prefix) for scoring with a model, from ``packed_sequences`` and
        ``shared_prefix``. A model sharded over the processes (FSDP student, sharded teacher)
        scores padded, one forward per batch: each of its forwards is a collective, so every
        process must run the same number, and packing (a forward per width group) and shared
        prefixes (more forwards when a batch holds both shared and lone rows) make that number
        depend on the data."""
        if sharded:
            return False, False
        return self.packed_sequences, self.shared_prefix


@dataclass
class TaskConfig:
    """Which environment the student plays."""

    name: str = "tool_math"
    """Task name (``reopold-agent envs`` lists them)."""
    env_id: str | None = None
    """Gymnasium id overriding the task's environment, e.g. ``my_pkg.envs:MyEnv-v0``."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment constructor."""
    prompts: str | None = None
    """A JSON Lines file (or ``hf:NAME[:SPLIT]``, a Hugging Face ``datasets`` split) of prompts,
    played in the generic ``reopold_agent/PromptDataset-v0`` environment; its ``tools``,
    ``verifier``, ``system_prompt`` and ``eval_prompts`` go in ``env_kwargs``
    (docs/environments.md)."""

    def __post_init__(self) -> None:
        if self.prompts is not None and self.env_id is not None:
            raise ValueError("task.prompts plays reopold_agent/PromptDataset-v0; it cannot be combined with "
                             f"task.env_id={self.env_id!r}")


@dataclass
class ObjectiveConfig:
    """The loss and the choices around it that the paper leaves open."""

    name: ObjectiveName = "reopold"
    reopold: ReopoldConfig = field(default_factory=ReopoldConfig)
    rkl: RklConfig = field(default_factory=RklConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    switch_fraction: float | None = ranged(0.33, ge=0, le=1)
    """REOPOLD's switch step as a fraction of ``train.steps`` (paper: about one third). Set it to
    null to use ``reopold.switch_step`` instead (a training step; setting both is an error)."""
    entropy_source: Literal["behaviour", "current"] = "behaviour"
    """Entropy used for token selection (paper: unspecified). ``behaviour``: recorded at sampling
    under pi_old (free, fixed across mini-batches); ``current``: recomputed under pi_theta."""
    selection_scope: Literal["step", "minibatch"] = "minibatch"
    """Batch over which the top-beta entropy threshold and the loss normaliser are computed
    (paper: unspecified). Never per micro-batch."""
    tis_cap: float | None = ranged(None, ge=1)
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
        check_ranges(self)
        if self.switch_fraction is not None and self.reopold.switch_step != ReopoldConfig.switch_step:
            raise ValueError(f"objective.reopold.switch_step={self.reopold.switch_step} is ignored while "
                             f"objective.switch_fraction={self.switch_fraction} is set; set objective.switch_fraction "
                             "to null to switch at that step")
        if self.entropy_source == "current" and self.selection_scope == "step":
            raise ValueError("objective.entropy_source=current needs objective.selection_scope=minibatch: the "
                             "current policy's entropies exist only per mini-batch, after the step's earlier "
                             "optimiser steps, so a threshold over the whole step cannot be taken from them")


@dataclass
class TrainLoopConfig:
    """The training loop: batch sizes, optimiser, schedule, checkpoints."""

    steps: int = ranged(100, ge=1)
    prompts_per_step: int = ranged(8, ge=1)
    """P: prompts per step; each is rolled out ``rollout.group_size`` times."""
    mini_batches: int = ranged(1, ge=1)
    """Optimiser steps per training step (the rollout batch is split into this many)."""
    mini_batch_split: Literal["rows", "prompts"] = "rows"
    """How the rollout batch is split into mini-batches. ``rows``: rollouts drawn at random (the
    paper), so a mini-batch mixes many prompts and holds few rollouts of each. ``prompts``: whole
    prompt groups drawn at random, so a prompt's rollouts share one mini-batch and its prompt is
    encoded once in the update (``model.shared_prefix``); each optimiser step then sees
    ``mini_batches`` times fewer prompts, with all their rollouts."""
    micro_batch_rows: int = ranged(32, ge=1)
    """Trajectories per forward/backward (gradient accumulation inside a mini-batch)."""
    lr: float = ranged(1e-5, gt=0)
    weight_decay: float = ranged(0.0, ge=0)
    warmup_steps: int = ranged(0, ge=0)
    """Training steps of linear learning-rate warm-up."""
    lr_decay: LrDecay = "constant"
    """After warm-up: constant (the paper), or cosine decay to ``final_lr_ratio * lr`` at the last step."""
    final_lr_ratio: float = ranged(0.1, ge=0, le=1)
    grad_clip: float = ranged(1.0, gt=0)
    """Largest gradient norm; larger gradients are scaled down to it."""
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    """``adamw``: torch's AdamW (fp32 state, 8 bytes per parameter); ``adamw_8bit``:
    bitsandbytes' 8-bit AdamW (2 bytes per parameter), on a CUDA GPU only."""
    seed: int = ranged(0, ge=0)
    """Seeds the order of the train items and the rollouts' sampling."""
    shuffle: bool = True
    """Play the train items in a seeded random order, reshuffled every pass over the split
    (false: in index order)."""
    save_every: int = ranged(50, ge=1)
    """Checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = ranged(2, ge=1)
    torch_threads: int | None = ranged(None, ge=1)
    """CPU threads for torch (null: leave torch's default)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    every: int = ranged(0, ge=0)
    """Evaluate every this many steps (0: only before training and at the end)."""
    num_problems: int = ranged(500, ge=0)
    """Held-out problems (the eval split, fixed; 0: no evaluation)."""
    samples: int = ranged(4, ge=1)
    """Sampled attempts per problem at temperature 1 (pass@k, maj@k, sampled accuracy)."""
    top_p: float | None = ranged(None, gt=0, le=1)
    """Nucleus of the sampled evaluation episodes; null: ``rollout.top_p``, as in training. Lets
    a run train at top-p 1 (the paper's setting) and report accuracy at a sharper nucleus."""
    greedy: bool = True
    """Also decode greedily once per problem (greedy accuracy)."""
    batch_episodes: int = ranged(256, ge=1)
    """Episodes played at once during evaluation."""
    teacher: bool = False
    """Also evaluate the teacher once before training (logged as ``eval/teacher_...``)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class TrainConfig:
    """Everything a ``reopold-agent train`` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "runs/latest"

    def __post_init__(self) -> None:
        check_batch_shape(self, processes=1)
        check_placement(self)
        if self.model.lora is not None and self.rollout.backend == "vllm":
            raise ValueError("model.lora trains an adapter, and rollout.backend=vllm samples from its own full copy "
                             "of the student without it; use rollout.backend=hf with model.lora")


def check_batch_shape(config: TrainConfig, processes: int) -> None:
    """Refuse step shapes that cannot be split evenly over ``processes`` training processes.

    Each process plays ``train.prompts_per_step / processes`` prompts, ``rollout.group_size``
    rollouts each, and splits those rows into ``train.mini_batches`` equal mini-batches, so that
    every process runs the same number of optimiser steps and collectives.

    Raises:
        ValueError: fewer prompts than processes, prompts not divisible by processes, or rows per
            process not divisible by mini-batches.
    """
    prompts, groups, minis = config.train.prompts_per_step, config.rollout.group_size, config.train.mini_batches
    if prompts < processes:
        raise ValueError(f"train.prompts_per_step={prompts} is fewer than the {processes} training processes; "
                         "every process needs at least one prompt per step")
    if prompts % processes:
        raise ValueError(f"train.prompts_per_step={prompts} is not divisible by the {processes} training "
                         "processes; every process plays an equal share of the prompts")
    rows = prompts // processes * groups
    if config.train.mini_batch_split == "prompts" and (prompts // processes) % minis:
        raise ValueError(f"train.mini_batches={minis} does not divide the {prompts // processes} prompts each of the "
                         f"{processes} process(es) plays per step, as train.mini_batch_split=prompts needs (whole "
                         "prompt groups per mini-batch)")
    if rows % minis:
        raise ValueError(f"train.mini_batches={minis} does not divide the {rows} rollouts each of the {processes} "
                         f"process(es) trains on per step (train.prompts_per_step / processes x rollout.group_size)")
