"""The trainer's engine-side set-up: the accelerator (DDP, FSDP2 or one process), the
optimizer, the LoRA adapter, the device, and the check that a step's rows split evenly over
the processes. Used by :func:`reopold_agent.commands.train_command`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import UsageError, first_line
from .lora import trainable_parameters
from .train_config import TrainConfig


def run_device(config: TrainConfig) -> torch.device:
    """The device of ``model.device``: ``auto`` is the current CUDA GPU when one is visible, else
    the CPU. Naming ``cuda:N`` makes GPU N the current CUDA device of this process (where
    accelerate and a bare ``"cuda"`` put tensors).

    Raises:
        UsageError: a CUDA device is asked for and none (or fewer) is visible.
    """
    name = config.model.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"model.device={name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None:
            if device.index >= torch.cuda.device_count():
                raise UsageError(f"model.device={name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
            torch.cuda.set_device(device.index)
    return device


def with_lora(student: Any, config: TrainConfig, *, log: Callable[[str], None] = print) -> Any:
    """``student`` wrapped in a fresh LoRA adapter when ``model.lora`` asks for one (its base
    weights frozen), else ``student`` itself.

    Raises:
        UsageError: ``peft`` is not installed, or no module matches ``model.lora.target_modules``.
    """
    if config.model.lora is None:
        return student
    from .lora import LoraUnavailable, attach_lora

    try:
        wrapped = attach_lora(student, config.model.lora, seed=config.train.seed)
    except (LoraUnavailable, ValueError) as exc:
        raise UsageError(f"model.lora: {first_line(exc)}") from None
    trained = sum(p.numel() for p in trainable_parameters(wrapped))
    total = sum(p.numel() for p in wrapped.parameters())
    log(f"LoRA adapter (r={config.model.lora.r}): training {trained:,} of the student's {total:,} parameters")
    return wrapped


def check_processes(config: TrainConfig) -> None:
    """Refuse, before any model loads, a step shape that does not split evenly over the
    launcher's processes (:func:`~reopold_agent.train_config.check_batch_shape`)."""
    from accelerate import PartialState

    from .train_config import check_batch_shape

    try:
        check_batch_shape(config, PartialState(cpu=run_device(config).type == "cpu").num_processes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def make_accelerator(mixed_precision: str, *, vision_language: bool, cpu: bool) -> Any:
    """The run's ``Accelerator``, with the strategy of the user's accelerate config: DDP across
    the launcher's processes (or one process), or FSDP2 (``fsdp_version: 2``), which shards the
    student's parameters, gradients and optimizer state over the processes. Mixed precision
    from ``model.dtype``. A vision-language student's vision tower gets no gradient on a
    micro-batch without images, so DDP looks for unused parameters then.

    Raises:
        UsageError: the accelerate config asks for a strategy this trainer does not run (FSDP
            version 1, DeepSpeed, Megatron-LM).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    ddp = DistributedDataParallelKwargs(find_unused_parameters=vision_language)
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                              kwargs_handlers=[ddp])
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise UsageError("the accelerate config asks for FSDP version 1; this trainer runs FSDP2: set "
                         "fsdp_version: 2 in the config (or accelerate launch --fsdp_version 2)")
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise UsageError(f"the accelerate config asks for {accelerator.distributed_type.value}, which this trainer "
                         "does not run; use FSDP2 (fsdp_version: 2), DDP (accelerate launch --multi_gpu) or one "
                         "process")
    return accelerator


def is_fsdp(accelerator: Any) -> bool:
    """Whether ``accelerator`` shards the models it prepares (FSDP)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def make_optimizer(student: Any, config: TrainConfig) -> Any:
    """AdamW over the student's trainable parameters: torch's (fp32 state), or bitsandbytes' 8-bit AdamW
    (``train.optimizer: adamw_8bit``, CUDA only: its state takes a quarter of the memory).

    Raises:
        UsageError: 8-bit AdamW asked for without a CUDA GPU or without bitsandbytes.
    """
    kwargs = {"lr": config.train.lr, "weight_decay": config.train.weight_decay}
    params = trainable_parameters(student)  # a LoRA student's adapter only
    if config.train.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if next(student.parameters()).device.type != "cuda":
        raise UsageError("train.optimizer=adamw_8bit runs on a CUDA GPU only (bitsandbytes); use train.optimizer=adamw "
                         "on the CPU")
    try:
        import bitsandbytes
    except ImportError:
        raise UsageError("train.optimizer=adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)
