"""The bodies of the CLI commands: build components from a config and run them.

Kept apart from :mod:`reopold_agent.cli` (argument parsing) so that tests and scripts can call
``train_command(config)`` directly. Problems the user can fix raise ``UsageError``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError, first_line
from .config_loading import to_dict
from .config_ranges import FieldError
from .lora import adapted_model, save_merged
from .lr_schedule import lr_multiplier
from .train_config import TrainConfig
from .train_setup import (
    check_processes,
    is_fsdp,
    make_accelerator,
    make_optimizer,
    run_device,
    with_lora,
)


def quiet_transformers() -> None:
    """No per-file progress bars from transformers in CLI output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load tokenizer from {path!r}: {first_line(exc)}") from None


def load_model(path: str, *, dtype: torch.dtype, role: str, trust_remote_code: bool = False) -> Any:
    """A text or vision-language model (by its config), with a one-line error naming role and path.
    A LoRA run's checkpoint (an adapter folder) loads as its base model with the adapter merged."""
    from .lora import LoraUnavailable, is_adapter_folder, load_merged_adapter
    from .vision.loading import ModelLoadError
    from .vision.loading import load_model as load

    from .sequence_scoring import backbone_and_head

    def load_folder(folder: str) -> Any:
        return load(folder, dtype=dtype, role=role, trust_remote_code=trust_remote_code)

    try:
        model = load_merged_adapter(path, load_folder) if is_adapter_folder(path) else load_folder(path)
        backbone_and_head(model)  # the scoring path needs a plain head; refuse others before training
    except LoraUnavailable as exc:
        raise UsageError(f"{role} {path} is a LoRA adapter: {exc}") from None
    except (ModelLoadError, ValueError) as exc:
        raise UsageError(f"{role} {path}: {first_line(exc)}" if not isinstance(exc, ModelLoadError)
                         else str(exc)) from None
    return model


def load_vision(model: Any, path: str, config: TrainConfig) -> Any:
    """The :class:`~reopold_agent.vision.VisionProcessor` of a vision-language student, else None."""
    from .vision import VisionProcessor
    from .vision.loading import ModelLoadError, is_vision_language, load_processor

    if not is_vision_language(model.config):
        return None
    try:
        processor = load_processor(path)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    return VisionProcessor.for_model(model.config, processor.image_processor,
                                     min_pixels=config.rollout.image_min_pixels,
                                     max_pixels=config.rollout.image_max_pixels)


def resolve_model_paths(config: TrainConfig, cache_dir: Path, *, need_teacher: bool = True,
                        sandbox: Any = None) -> tuple[str, str | None]:
    """(student, teacher) paths; the task's embedded tiny models fill in what is not named.

    Building the embedded models measures them on probe episodes, whose tool calls run in
    ``sandbox`` (or, when None, in a sandbox made from the run's settings for the build only).
    """
    student, teacher = config.model.student, config.model.teacher
    if student is None or (teacher is None and need_teacher):
        from .demo.embedded import RECIPES, ensure_embedded_models, is_built
        from .demo.measured_stop import EmbeddedBuildError

        if config.task.name not in RECIPES:
            raise UsageError(f"task {config.task.name!r} has no embedded default models; name them with "
                             f"--student and --teacher (embedded defaults exist for: {', '.join(sorted(RECIPES))})")
        own_sandbox = sandbox is None and not is_built(config.task.name, cache_dir)
        if own_sandbox:
            sandbox = build_sandbox(config)
        try:
            built = ensure_embedded_models(config.task.name, cache_dir, sandbox=sandbox, log=_log)
        except EmbeddedBuildError as exc:
            raise UsageError(f"{exc}; nothing was cached, so the next run builds again") from None
        finally:
            if own_sandbox:
                sandbox.close()
        student = student or str(built.student)
        teacher = teacher or str(built.teacher)
    return student, teacher


def model_dtypes(config: TrainConfig) -> tuple[torch.dtype, torch.dtype, str]:
    """(student param dtype, teacher dtype, accelerate mixed precision)."""
    name = config.model.dtype
    if name == "auto":
        name = "bfloat16" if run_device(config).type == "cuda" else "float32"
    low = getattr(torch, name)
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(name, "no")
    return torch.float32, low, mixed


def avoid_cudnn_attention() -> None:
    """Turn off PyTorch's cuDNN attention backend for this process (vLLM does the same).

    cuDNN builds an execution graph for every new attention shape, and here shapes never repeat
    for long: every decode step has a longer key cache, every batch another padded width. On an
    H100 (torch 2.11, cuDNN chosen by default) a 64-row decode step of the 0.5B-shaped GPU check
    took 140 ms the first time its shapes came up and 43 ms when they came again. The other
    backends (memory-efficient, flash, math) need no per-shape build. No effect on the CPU.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def make_env_factory(config: TrainConfig, sandbox: Any, split: str):
    """A function making the run's environment for ``split``, checked once here.

    ``split`` and ``sandbox`` go to environments whose constructor takes them (every
    ``ToolEnv``). A plain ``gymnasium.Env`` must open episodes as the contract says; one
    without numbered items is noted once, with the ``eval`` factory (see :func:`_plain_env_note`).
    """
    from .envs import ToolEnv
    from .envs.checker import ToolEnvCheckError, check_opening
    from .envs.registry import accepted_keywords, make_env
    from .tasks.spec import TASKS

    env_id = config.task.env_id
    if env_id is None:
        if config.task.name not in TASKS:
            raise UsageError(f"unknown task {config.task.name!r}; pass --env module:Env-v0 or one of {sorted(TASKS)}")
        env_id = TASKS[config.task.name].env_id
    kwargs = dict(config.task.env_kwargs)
    if config.task.prompts is not None:
        env_id, kwargs["items"] = prompt_dataset_items(config.task.prompts)

    def factory():
        return make_env(env_id, **kwargs)

    try:
        run = {"split": split, "sandbox": sandbox}
        kwargs.update({k: run[k] for k in accepted_keywords(env_id, tuple(run))})
        env = factory()
        if not isinstance(env, ToolEnv):
            check_opening(env)
        env.close()
    except ToolEnvCheckError as exc:
        raise UsageError(f"environment {env_id!r} does not follow the tool-environment contract "
                         f"(docs/environments.md): {first_line(exc)}") from None
    except FieldError as exc:  # a constructor argument out of range, named as the config key
        raise UsageError(f"task.env_kwargs.{exc.field} {exc.reason} (environment {env_id})") from None
    except (KeyError, ValueError, ImportError, ModuleNotFoundError, TypeError) as exc:
        raise UsageError(f"cannot make environment {env_id!r}: {first_line(exc)}") from None
    if split == "eval" and not callable(getattr(env, "num_items", None)):
        _log(_plain_env_note(env_id, held_out="split" in kwargs))
    if split == "eval" and getattr(env, "eval_is_train", False):
        _log(f"note: {config.task.prompts} holds no eval prompts (\"split\": \"eval\") and task.env_kwargs names no "
             "eval_prompts: evaluation plays training prompts")
    return factory


def prompt_dataset_items(source: str) -> tuple[str, list[dict[str, Any]]]:
    """The id of the generic prompt environment and the items of ``task.prompts``, read once
    for all the run's environments.

    Raises:
        UsageError: a missing file or a bad line (``file:line: reason``).
    """
    from .envs.prompt_dataset import ENV_ID
    from .tasks.data import TaskDataError
    from .tasks.prompt_data import load_prompt_items

    try:
        return ENV_ID, load_prompt_items(source)
    except TaskDataError as exc:
        raise UsageError(str(exc)) from None


def _plain_env_note(env_id: str, *, held_out: bool) -> str:
    """What the run does instead for an environment without numbered items (``num_items``)."""
    where = ("its split='eval'" if held_out else
             "the training environment (it takes no split=), so they are not held out from training")
    return (f"note: {env_id} has no numbered items (num_items): training draws each problem from its reset "
            f"seed, and evaluation plays eval.num_problems fixed reset seeds of {where}")


def build_sandbox(config: TrainConfig) -> Any:
    import os

    from .sandbox import SandboxUnavailable, make_sandbox

    try:
        return make_sandbox(config.sandbox, env=os.environ)
    except SandboxUnavailable as exc:
        raise UsageError(str(exc)) from None


def rollout_engine(model: Any, tokenizer: Any, config: TrainConfig, vision: Any = None, *,
                   sampler: str = "hf", path: str | None = None, processes: int = 1, sharded: bool = False) -> Any:
    """A rollout engine with the run's rollout settings, sampling from ``model`` in process
    (``sampler="hf"``) or from a vLLM engine loaded from ``path``, ``model``'s folder
    (``sampler="vllm"``; the trainer keeps its weights in step). ``processes``: how many
    training processes the run has. ``sharded``: ``model`` is a full copy of a student that
    FSDP shards, refreshed from the shards after every update
    (:class:`~reopold_agent.sharded_sampling.ShardedStudentSampler`)."""
    from .rollout.engine import RolloutEngine
    from .rollout.hf_backend import HFGenerationBackend
    from .sharded_sampling import ShardedStudentSampler

    if sampler == "vllm":
        if path is None:
            raise ValueError("the vllm sampler loads the student from its folder; pass path=")
        backend = vllm_backend(path, config, vision, processes=processes)
    else:
        backend = (ShardedStudentSampler if sharded else HFGenerationBackend)(
            model, pad_token_id=tokenizer.pad_token_id, vision=vision, cpu_threads=config.rollout.torch_threads,
            static_cache=config.rollout.static_cache, compile_decode=config.rollout.compile_decode,
            share_prompts=config.model.shared_prefix)
    return RolloutEngine(backend, tokenizer, config.rollout, vision=vision)


def vllm_backend(path: str, config: TrainConfig, vision: Any = None, *, processes: int = 1) -> Any:
    """vLLM's engine in this process, loaded from ``path`` with the ``rollout.vllm`` settings.

    One training process only: each process would start an engine of its own on the same
    devices, which is not implemented (use ``rollout.vllm.tensor_parallel_size`` for a large
    student).

    Sets the environment vLLM reads (:data:`~reopold_agent.rollout.vllm_backend.PROCESS_ENVIRONMENT`
    always, :data:`~reopold_agent.rollout.vllm_backend.DEFAULT_ENVIRONMENT` where unset) before
    vLLM is imported. ``dtype: auto`` follows ``model.dtype``.
    """
    import os

    from .rollout.vllm_backend import DEFAULT_ENVIRONMENT, PROCESS_ENVIRONMENT, VLLMGenerationBackend, VLLMStartError

    if processes > 1:
        raise UsageError(f"rollout.backend=vllm runs in a single training process, not {processes}; "
                         "use rollout.backend=hf with several processes")
    if vision is not None:
        raise UsageError("rollout.backend=vllm samples text students only (vision-language students through "
                         "vLLM are not implemented: untested here); use rollout.backend=hf")
    os.environ.update(PROCESS_ENVIRONMENT)
    for key, value in DEFAULT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    settings = config.rollout.vllm
    dtype = settings.dtype if settings.dtype != "auto" else str(model_dtypes(config)[1]).removeprefix("torch.")
    try:
        return VLLMGenerationBackend(path, settings, dtype=dtype, seed=config.train.seed,
                                     max_model_len=settings.max_model_len or config.rollout.max_episode_tokens,
                                     cpu_threads=config.rollout.torch_threads)
    except VLLMStartError as exc:
        raise UsageError(str(exc)) from None


def train_command(config: TrainConfig, *, resume: bool, cache_dir: Path) -> int:
    """Train as ``config`` says. The caller has checked and locked the run directory
    (:func:`reopold_agent.run_directory.open_run_directory`)."""
    from .interruption import StopSignals
    from .progress import TrainProgress
    from .run_logging import RunLogger
    from .sequence_scoring import SequenceScorer
    from .teacher_setup import build_teacher
    from .trainer import Trainer, TrainerParts

    if config.train.torch_threads:
        torch.set_num_threads(config.train.torch_threads)
    avoid_cudnn_attention()
    param_dtype, low_dtype, mixed = model_dtypes(config)
    check_processes(config)
    sandbox = build_sandbox(config)
    make_train_env, make_eval_env = make_env_factory(config, sandbox, "train"), make_env_factory(config, sandbox, "eval")
    config = fit_eval_to_split(config, make_eval_env, log=_log)
    need_teacher = config.objective.name != "grpo"
    student_path, teacher_path = resolve_model_paths(
        config, cache_dir, need_teacher=need_teacher and config.teacher.backend != "server", sandbox=sandbox)
    tokenizer = load_tokenizer(student_path)
    student = load_model(student_path, dtype=param_dtype, role="student",
                         trust_remote_code=config.model.trust_remote_code)
    vision = load_vision(student, student_path, config)
    accelerator = make_accelerator(mixed, vision_language=vision is not None, cpu=run_device(config).type == "cpu")
    if config.model.gradient_checkpointing:
        from .vision.loading import enable_activation_checkpointing

        enable_activation_checkpointing(student)
    student = with_lora(student, config, log=_log)
    teacher = None
    if need_teacher:
        teacher = build_teacher(config, teacher_path, tokenizer, student=student, vision=vision,
                                device=accelerator.device, load_model=load_model, load_tokenizer=load_tokenizer,
                                teacher_dtype=low_dtype)
    student = student.to(accelerator.device)
    # FSDP shards the student in place; the in-process sampler generates from a full copy
    if is_fsdp(accelerator) and config.model.lora is not None:
        raise UsageError("model.lora with FSDP is not implemented; train the adapter with DDP (accelerate launch "
                         "--multi_gpu) or one process")
    if is_fsdp(accelerator) and config.train.optimizer == "adamw_8bit":
        raise UsageError("train.optimizer=adamw_8bit with FSDP is not implemented (bitsandbytes' 8-bit state is kept "
                         "per whole parameter, not per shard); use train.optimizer=adamw, or adamw_8bit with DDP")
    sampler_copy = copy.deepcopy(adapted_model(student)) if is_fsdp(accelerator) else None
    optimizer = make_optimizer(student, config)
    per_step = config.train.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, warmup_steps=config.train.warmup_steps * per_step, total_steps=config.train.steps * per_step,
        decay=config.train.lr_decay, final_ratio=config.train.final_lr_ratio))
    # The engine wraps the scorer, whose forward is the chunked backbone + head scoring, so its
    # hooks (DDP's gradient synchronisation) fire; the scheduler stays unprepared: it steps once
    # per optimiser step, not once per process.
    packed, shared_prefix = config.model.scoring_layout(sharded=is_fsdp(accelerator))
    scorer = SequenceScorer(adapted_model(student), packed=packed, shared_prefix=shared_prefix and vision is None)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    engine = rollout_engine(adapted_model(student) if sampler_copy is None else sampler_copy, tokenizer, config, vision,
                            sampler=config.rollout.backend, path=student_path, processes=accelerator.num_processes,
                            sharded=sampler_copy is not None)
    logger = RunLogger(config.output_dir, logging=config.logging)
    resolved = dataclasses.replace(
        config, model=dataclasses.replace(config.model, student=student_path, teacher=teacher_path),
        sandbox=dataclasses.replace(config.sandbox, e2b_api_key="<redacted>" if config.sandbox.e2b_api_key else None),
    )
    teacher_engine = None
    if teacher is not None and (config.eval.teacher or config.objective.name == "sft"):
        teacher_engine = rollout_engine(teacher.model, tokenizer, config, vision)
    parts = TrainerParts(student, tokenizer, optimizer, scheduler, engine, teacher,
                         make_train_env, make_eval_env, logger, accelerator, teacher_engine, scorer=scorer)
    try:
        # Ctrl-C and SIGTERM stop the run at a whole step and save it (reopold_agent.interruption)
        with TrainProgress(config.train.steps, enabled=accelerator.is_main_process) as progress, \
                StopSignals() as stop:
            trainer = Trainer(config, parts, on_step=progress.update, log=progress.log, critical=stop.deferred,
                              run_config=to_dict(resolved))
            final = trainer.train(resume=resume)
    finally:
        sandbox.close()
        if teacher is not None:
            teacher.close()
    if accelerator.is_main_process:
        if config.model.lora is not None:
            out = save_merged(student, Path(config.output_dir) / "merged", tokenizer=tokenizer,
                              image_processor=getattr(vision, "image_processor", None))
            _log(f"saved the student with its adapter merged to {out} (the adapter alone: checkpoints/)")
        _print_summary(config.output_dir, final)
    return 0


def fit_eval_to_split(config: TrainConfig, make_eval_env: Any, *, log: Any) -> TrainConfig:
    """``config`` with ``eval.num_problems`` cut to the size of the environment's eval split,
    saying so once through ``log`` when it is cut (an environment without ``num_items``, or
    whose split is large enough, leaves it as it is)."""
    env = make_eval_env()
    try:
        size = env.num_items()
    except (AttributeError, NotImplementedError):
        size = None
    finally:
        env.close()
    wanted = config.eval.num_problems
    if size is None or wanted <= size:
        return config
    name = getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    log(f"the eval split of {name} holds {size} items, fewer than eval.num_problems={wanted}: evaluating those {size}")
    return dataclasses.replace(config, eval=dataclasses.replace(config.eval, num_problems=size))


def list_envs_command(*, json_output: bool) -> int:
    from .envs.registry import list_envs

    infos = list_envs()
    if json_output:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2, default=str))
        return 0
    for info in infos:
        print(f"{info.env_id}  ({info.entry_point})")
        for tool in info.tools:
            print(f"    {tool}")
    return 0


def _print_summary(run_dir: str, final: dict[str, float]) -> None:
    """The run directory, the final evaluation, and teacher / student before / after accuracy
    (read back from ``metrics.jsonl``, so a resumed run reports from its first session on)."""
    from .progress import accuracy_summary
    from .run_logging import read_metrics

    keys = [k for k in final if k.startswith("eval/")]
    shown = {k: round(v, 4) for k, v in final.items() if k in keys and isinstance(v, float) and math.isfinite(v)}
    _log(f"run directory: {run_dir}")
    if shown:
        _log("final evaluation: " + json.dumps(shown))
    for line in accuracy_summary(read_metrics(run_dir)):
        _log(line)


def _log(message: str) -> None:
    print(message, flush=True)


def _note(message: str) -> None:
    """A line for the user on stderr, where it cannot mix with a command's JSON on stdout."""
    print(message, file=sys.stderr, flush=True)

