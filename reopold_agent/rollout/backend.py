"""The generation-backend interface the rollout engine talks to.

The engine hands a backend a batch of token-id prompts and gets back, for every row, the sampled
continuation, the behaviour log-probs of the sampled tokens under the *unwarped* distribution
(raw logits, temperature 1: the policy the objective's ratio refers to), the student's entropy
at each sampled position where the backend computes it, and why the row stopped. A new backend
(a remote server, say) is a new class implementing :class:`GenerationBackend`; the engine does
not change. Two exist: :mod:`.hf_backend` (the trainer's own model) and :mod:`.vllm_backend`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one assistant turn."""

    temperature: float = 1.0
    """Softmax temperature for sampling (1.0 = the policy itself; 0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop_token_ids: tuple[int, ...] = ()
    """A row stops right after sampling one of these (kept in its output)."""
    suppress_token_ids: tuple[int, ...] = ()
    """Never sampled (e.g. the image placeholder, which only images may bring into a sequence).
    Behaviour log-probs stay those of the raw logits, which the update also uses."""


@dataclass(frozen=True)
class Generation:
    """What a backend sampled for one row (N new tokens)."""

    token_ids: list[int]
    """[N] sampled ids, including the stop token if one was hit."""
    logprobs: list[float]
    """[N] log pi_old(token) under the raw (temperature-1, unfiltered) logits."""
    entropy: list[float | None]
    """[N] entropy (nats) of the raw next-token distribution at each sampled position; None
    where the backend does not compute it (see ``GenerationBackend.reports_entropy``)."""
    finish_reason: Literal["stop", "length"]
    """"stop" when a stop token was sampled, "length" when the row's budget ran out."""


def check_rows(prompts: list, max_new_tokens: list, seeds: list) -> None:
    """Raise ValueError unless every row has a prompt, a budget and a seed."""
    if not len(prompts) == len(max_new_tokens) == len(seeds):
        raise ValueError(f"{len(prompts)} prompts, {len(max_new_tokens)} budgets and {len(seeds)} seeds; "
                         "need one of each per row")


@dataclass
class RefillRow:
    """A row that joins a decode batch while it runs (an episode back from its tool)."""

    prompt: list[int]
    """Token ids of the whole context so far."""
    max_new_tokens: int
    """The row's budget (>= 1)."""
    seed: int
    """The row's sampling seed (see :meth:`GenerationBackend.generate`)."""


class GenerationBackend(abc.ABC):
    """Samples continuations of token-id prompts from the current student."""

    name: str = "hf"
    """Recorded in every trajectory the backend samples (``Trajectory.sampler``)."""
    reports_entropy: bool = True
    """False for a backend that runs its own copy of the model (vLLM): its log-probs come from
    other kernels and it gives no entropy, so the trainer recomputes both with its own model
    before the update and logs how far the sampler's log-probs were from its own."""
    supports_refill: bool = False
    """True for a backend whose ``generate`` takes ``refill``: a callable it asks between
    decode steps for up to ``free`` more rows (:class:`RefillRow`) to decode in the same batch,
    reported through ``on_row_done`` with indices after the initial rows, in the order they
    joined."""

    @abc.abstractmethod
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
        """Sample one continuation per prompt.

        Args:
            prompts: B lists of token ids (full context so far, never re-tokenised).
            max_new_tokens: [B] per-row budgets (>= 1).
            params: sampling settings shared by the batch.
            seeds: [B] one seed per row. A row's samples must depend only on its own prompt,
                budget, seed and the model, never on its position in the batch or on the
                other rows, so that a resumed run reproduces its rollouts however the
                engine happens to group episodes into batches.
            extra_inputs: per-row model inputs besides ids (e.g. image features), or None.
            on_row_done: called as ``on_row_done(b, generation)`` from the generating thread
                as soon as row ``b`` has stopped, while the other rows go on decoding (the
                engine starts that episode's tool calls then). Optional for a backend: the
                engine treats any row it was not told about once ``generate`` returns.

        Returns:
            [B] one :class:`Generation` per prompt, in order.
        """

    def sync_weights(self, model: Any) -> None:
        """Load the trainer's current student weights (no-op for in-process backends)."""

    def sleep(self) -> None:
        """Free generation memory while the trainer scores and updates (no-op by default);
        the next ``sync_weights`` or ``generate`` wakes the backend."""
