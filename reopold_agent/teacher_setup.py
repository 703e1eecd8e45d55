"""Builds the teacher backend a run's ``teacher.backend`` names, with the checks each needs first.

* ``hf``: the teacher model loaded into the trainer's process; tokenizer and embedding sizes
  checked against the student's (:func:`reopold_agent.teacher.check_vocabularies`).
* ``vllm``: the teacher folder's tokenizer checked against the student's and its vocabulary
  size read from its config, then vLLM's engine started in this process.
* ``server``: the API key read from ``teacher.server.api_key_env``, then the server asked for its
  model, its length limit and the tokenization of a probe text
  (:meth:`reopold_agent.teacher_server.ServerTeacher.check`).

``vllm`` and ``server`` score text only: a vision-language student or teacher is refused.
Problems found here raise :class:`~reopold_agent.errors.UsageError` (one line, nothing trained yet).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import UsageError
from .train_config import TrainConfig


def build_teacher(config: TrainConfig, teacher_path: str | None, tokenizer: Any, *, student: Any, vision: Any,
                  device: Any, load_model: Any, load_tokenizer: Any, teacher_dtype: Any,
                  env: Mapping[str, str] = os.environ) -> Any:
    """The run's :class:`~reopold_agent.teacher_scoring.TeacherBackend`.

    Args:
        teacher_path: the teacher's folder or hub id (unused by ``server``).
        tokenizer: the student's tokenizer.
        student: the student model (its embedding size is checked by ``hf``).
        vision: the student's vision processor, or None for a text student.
        device: where the ``hf`` teacher runs.
        load_model, load_tokenizer: the CLI's loaders (one-line errors naming role and path).
        teacher_dtype: torch dtype of the teacher (``hf``) and, by name, of vLLM's engine.
        env: where ``teacher.server.api_key_env`` is looked up.
    """
    backend = config.teacher.backend
    if backend != "hf" and vision is not None:
        raise UsageError(f"teacher.backend={backend} scores text only (vision-language teachers through vLLM are not "
                         "implemented: untested here); use teacher.backend=hf for a vision-language student")
    if backend == "server":
        return _server_teacher(config, tokenizer, env)
    if teacher_path is None:
        raise UsageError(f"teacher.backend={backend} needs the teacher model (--teacher)")
    if backend == "vllm":
        return _vllm_teacher(config, teacher_path, tokenizer, str(teacher_dtype).removeprefix("torch."))
    from .teacher import TeacherScorer, check_vocabularies

    teacher_model = load_model(teacher_path, dtype=teacher_dtype, role="teacher",
                               trust_remote_code=config.model.trust_remote_code)
    check_vocabularies(tokenizer, load_tokenizer(teacher_path), teacher_model, student)
    if vision is not None:
        try:
            vision.check_compatible(teacher_model.config, "teacher")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    teacher_model = teacher_model.to(device)
    sharded = config.teacher.placement == "sharded"
    if sharded:
        teacher_model = _sharded(teacher_model, device)
    packed, shared_prefix = config.model.scoring_layout(sharded=sharded)
    return TeacherScorer(teacher_model, pad_token_id=tokenizer.pad_token_id,
                         batch_rows=config.model.teacher_batch_rows, chunk_rows=config.model.vocab_chunk_rows,
                         vision=vision, packed=packed, shared_prefix=shared_prefix)


def _sharded(teacher_model: Any, device: Any) -> Any:
    """``teacher_model`` sharded over the training processes (``teacher.placement: sharded``).

    Raises:
        UsageError: a single process (nothing to shard over), or a model without layer classes.
    """
    import torch.distributed as dist

    from .sharded_teacher import shard_teacher, teacher_mesh

    processes = dist.get_world_size() if dist.is_initialized() else 1
    if processes < 2:
        raise UsageError("teacher.placement=sharded spreads the teacher over several training processes, and this "
                         "run has one: launch it with accelerate launch --num_processes N, or use "
                         "teacher.placement=replicated")
    try:
        return shard_teacher(teacher_model, teacher_mesh(device, processes))
    except ValueError as exc:
        raise UsageError(f"teacher.placement=sharded: {exc}") from None


def _server_teacher(config: TrainConfig, tokenizer: Any, env: Mapping[str, str]) -> Any:
    from .teacher_scoring import TeacherError
    from .teacher_server import ServerTeacher

    settings = config.teacher.server
    api_key = None
    if settings.api_key_env:
        api_key = env.get(settings.api_key_env)
        if not api_key:
            raise UsageError(f"teacher.server.api_key_env names {settings.api_key_env}, which is not set")
    teacher = ServerTeacher(settings, api_key=api_key)
    try:
        teacher.check(tokenizer, max_tokens=config.rollout.max_episode_tokens)
    except TeacherError as exc:
        teacher.close()
        raise UsageError(str(exc)) from None
    return teacher


def _vllm_teacher(config: TrainConfig, teacher_path: str, tokenizer: Any, dtype: str) -> Any:
    from transformers import AutoConfig, AutoTokenizer

    from .rollout.vllm_backend import DEFAULT_ENVIRONMENT, PROCESS_ENVIRONMENT, VLLMStartError
    from .teacher import VocabularyMismatch, check_tokenizers
    from .teacher_vllm import VLLMTeacher
    from .vision.loading import is_vision_language

    try:
        model_config = AutoConfig.from_pretrained(teacher_path, trust_remote_code=config.model.trust_remote_code)
        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"teacher {teacher_path}: {str(exc).strip().splitlines()[0]}") from None
    if is_vision_language(model_config):
        raise UsageError(f"teacher.backend=vllm scores text only, and {teacher_path} is a vision-language model "
                         "(untested through vLLM here); use teacher.backend=hf")
    vocab = getattr(model_config.get_text_config(), "vocab_size", None)
    try:
        check_tokenizers(tokenizer, teacher_tokenizer)
        if isinstance(vocab, int) and len(tokenizer) > vocab:
            raise VocabularyMismatch(f"student tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary "
                                     f"has only {vocab}")
    except VocabularyMismatch as exc:
        raise UsageError(str(exc)) from None
    os.environ.update(PROCESS_ENVIRONMENT)
    for key, value in DEFAULT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    settings = config.teacher.vllm
    try:
        return VLLMTeacher(teacher_path, settings, dtype=settings.dtype if settings.dtype != "auto" else dtype,
                           max_model_len=config.rollout.max_episode_tokens, seed=config.train.seed)
    except VLLMStartError as exc:
        raise UsageError(str(exc)) from None
