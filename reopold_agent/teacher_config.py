"""Settings of teacher scoring (the ``teacher:`` section of a run configuration).

Which model the teacher is stays in ``model.teacher``; this section says where it runs:
``hf`` (a transformers model in the trainer's process, the default), ``vllm`` (vLLM's offline
engine in the trainer's process) or ``server`` (an OpenAI-compatible completions server, such as
``vllm serve``, reached over HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from .config_ranges import FieldError, check_ranges, ranged


@dataclass
class TeacherServerConfig:
    """The ``teacher.server`` section (used with ``teacher.backend: server``)."""

    url: str | None = None
    """Root of the server, e.g. ``http://10.0.0.5:8000`` (a trailing ``/v1`` is accepted):
    completions go to ``<url>/v1/completions``, the tokenizer probe to ``<url>/tokenize``."""
    model: str | None = None
    """Served model name (``vllm serve --served-model-name``); null: the only model the server lists."""
    api_key_env: str | None = None
    """Environment variable holding the API key sent as ``Authorization: Bearer``; null: none."""
    timeout_s: float = ranged(120.0, gt=0)
    """Seconds one request may take before it counts as failed (and is retried)."""
    max_retries: int = ranged(5, ge=0)
    """Re-sends of one request after a connection error, a timeout, a 5xx/429 answer or an answer
    that is not the expected JSON; then the run stops with an error (resumable)."""
    backoff_s: float = ranged(1.0, ge=0)
    """Wait before the first re-send; doubled for each further one."""
    max_backoff_s: float = ranged(30.0, gt=0)
    """Longest wait between two re-sends."""
    max_concurrency: int = ranged(16, ge=1)
    """Requests (one trajectory each) in flight at once."""
    check_tokenizer: bool = True
    """Before the first step, tokenize a probe text on the server (``/tokenize``) and with the
    student's tokenizer, and stop at the first differing id. Turn off only for a server without
    that endpoint whose tokenizer is known to be the student's."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.url is not None:
            try:
                parts = urlsplit(self.url)
                port_ok = parts.port is None or parts.port > 0
            except ValueError:
                parts, port_ok = None, False
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok \
                    or parts.query or parts.fragment:
                raise FieldError("url", f"must be an http(s) URL such as http://host:8000, got {self.url!r}")


@dataclass
class TeacherVLLMConfig:
    """The ``teacher.vllm`` section (used with ``teacher.backend: vllm``)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Teacher precision in vLLM; ``auto``: the run's teacher precision (``model.dtype``)."""
    gpu_memory_utilization: float = ranged(0.3, gt=0, le=1)
    """GPU only: share of GPU memory vLLM may take for the teacher's weights and KV cache."""
    enforce_eager: bool | None = None
    """Run eagerly, without compilation or CUDA graphs; null: eager on the CPU, graphs on a GPU."""
    tensor_parallel_size: int = ranged(1, ge=1)
    """GPUs the teacher is spread over."""
    cpu_kvcache_gib: float = ranged(1.0, gt=0)
    """CPU only: GiB of host memory for the KV cache of the sequences being scored."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class TeacherConfig:
    """Where the teacher runs."""

    backend: Literal["hf", "vllm", "server"] = "hf"
    """``hf``: a transformers model on the trainer's device (text and vision-language);
    ``vllm``: vLLM's offline engine in the trainer's process; ``server``: an OpenAI-compatible
    server (``vllm serve``) that scores the student's token ids with ``prompt_logprobs``.
    ``vllm`` and ``server`` score text trajectories only."""
    placement: Literal["replicated", "sharded"] = "replicated"
    """How an ``hf`` teacher sits on the training processes. ``replicated``: a whole copy on
    every process (its parameters in the teacher dtype, 2 bytes each in bf16). ``sharded``:
    FSDP2 without optimizer (:mod:`reopold_agent.sharded_teacher`): each of W processes holds
    1/W of the layers and embeddings plus the whole output head, and gathers one layer at a
    time while scoring; it needs several processes, scores without ``model.shared_prefix``,
    and cannot play episodes (``eval.teacher``, the ``sft`` objective)."""
    server: TeacherServerConfig = field(default_factory=TeacherServerConfig)
    vllm: TeacherVLLMConfig = field(default_factory=TeacherVLLMConfig)

    def __post_init__(self) -> None:
        if self.backend == "server" and self.server.url is None:
            raise FieldError("server.url", "must be set with teacher.backend=server (e.g. http://host:8000)")
        if self.placement == "sharded" and self.backend != "hf":
            raise FieldError("placement", f"must be replicated with teacher.backend={self.backend}: sharded places an "
                                          "hf teacher (a vllm teacher spreads itself with tensor_parallel_size)")


def check_placement(config: Any) -> None:
    """Refuse settings of a ``TrainConfig`` that the chosen teacher backend cannot serve.

    ``vllm`` and ``server`` only score: playing episodes with the teacher (``eval.teacher``, the
    ``sft`` objective) needs the ``hf`` teacher in process; and vLLM runs one engine per process,
    so a ``vllm`` teacher cannot sit beside a ``vllm`` rollout backend.

    Raises:
        ValueError: one of those combinations, naming the settings.
    """
    backend = config.teacher.backend
    if config.teacher.placement == "sharded" and config.objective.name != "grpo":
        playing = "objective sft plays the training episodes" if config.objective.name == "sft" else (
            "eval.teacher plays evaluation episodes" if config.eval.teacher else None)
        if playing is not None:
            raise ValueError(f"{playing} with the teacher, which a sharded teacher cannot do (each process holds a "
                             "part of it and processes decode different lengths); use teacher.placement=replicated"
                             + ("" if config.objective.name == "sft" else " or set eval.teacher=false"))
    if backend == "hf" or config.objective.name == "grpo":
        return
    if config.objective.name == "sft":
        raise ValueError(f"objective sft plays the training episodes with the teacher, which needs teacher.backend=hf "
                         f"(teacher.backend={backend} only scores)")
    if config.eval.teacher:
        raise ValueError(f"eval.teacher plays episodes with the teacher, which needs teacher.backend=hf "
                         f"(teacher.backend={backend} only scores); set eval.teacher=false")
    if backend == "vllm" and config.rollout.backend == "vllm":
        raise ValueError("teacher.backend=vllm with rollout.backend=vllm would start two vLLM engines in one process, "
                         "which vLLM does not allow; serve the teacher (vllm serve) and use teacher.backend=server")
