"""Records that cross module boundaries: one interleaved token sequence per episode.

A :class:`Trajectory` is what the rollout engine produces, what the teacher scores, what the
trainer turns into tensors and what ``reopold-agent replay`` shows. Every per-token list has the
same length ``T`` (the episode's token count). Conventions:

* ``source[t]`` says where token ``t`` came from (:class:`TokenSource`). Only ``model`` tokens
  were sampled by the student; everything else (prompt, tool output, image placeholders,
  padding) was templated by the engine.
* ``loss_mask[t]`` is 1 exactly on ``model`` tokens. Nothing else carries reward or counts in a
  normaliser.
* Per-token float fields hold ``None`` where a value is undefined (``logprobs`` outside model
  tokens, ``teacher_logprobs[0]``) or not computed yet (no teacher scores). Readers must treat
  ``None`` as "absent", never as zero.

The on-disk format (JSON Lines, one episode per line) is documented in ``docs/trajectory-format.md``
and implemented in :mod:`reopold_agent.trajectory_io`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
"""Version of the trajectory record; bumped on any incompatible change of fields."""


class TokenSource(str, enum.Enum):
    """Where a token of an episode came from."""

    PROMPT = "prompt"
    """System and user messages, and chat-template boundary tokens around them."""
    MODEL = "model"
    """Sampled by the student (the only tokens with loss mask 1)."""
    TOOL = "tool"
    """Tool-response messages appended by the engine, with their template boundaries."""
    IMAGE = "image"
    """Image placeholder tokens (vision-language models)."""
    PAD = "pad"
    """Padding added when episodes are batched."""


class EndReason(str, enum.Enum):
    """Why an episode stopped."""

    ANSWERED = "answered"
    """The environment terminated the episode (a final answer was given)."""
    TURN_LIMIT = "turn_limit"
    """The environment's tool-round cap was reached (gymnasium ``truncated``)."""
    TURN_TOKEN_BUDGET = "turn_token_budget"
    """A single assistant turn hit its token budget."""
    EPISODE_TOKEN_BUDGET = "episode_token_budget"
    """The whole episode hit its token budget."""
    ENV_ERROR = "env_error"
    """The environment itself failed; recorded as data so the batch goes on."""


@dataclass
class ImageRecord:
    """An image that appears in an episode (prompt image or tool output)."""

    path: str
    """File path, relative to the run directory (images are stored once per run)."""
    token_start: int
    """Index of the first image placeholder token in ``Trajectory.token_ids``."""
    token_end: int
    """One past the last placeholder token."""
    grid_thw: list[int] | None = None
    """Vision-encoder patch grid (temporal, height, width) used to recompute the forward."""


@dataclass
class Trajectory:
    """One multi-turn episode as a single interleaved token sequence (T tokens)."""

    token_ids: list[int]
    """[T] token ids, exactly as sampled or templated (never re-tokenised)."""
    source: list[str]
    """[T] :class:`TokenSource` value of each token."""
    turn: list[int]
    """[T] turn index: 0 for the opening prompt, then 1, 2, ... per assistant turn; tool
    tokens share the index of the assistant turn that called them."""
    loss_mask: list[int]
    """[T] 1 exactly on model-generated tokens, else 0."""
    logprobs: list[float | None]
    """[T] behaviour log-prob of each model token under the sampling student (pre-warping);
    None elsewhere. Filled by the rollout engine."""
    messages: list[dict[str, Any]]
    """Chat messages of the episode (system, user, assistant, tool), for display."""
    reward: float = 0.0
    """Outcome reward from the environment's verifier at episode end."""
    truncated: bool = False
    """True when the episode ended for any reason other than a final answer."""
    end_reason: str = EndReason.ANSWERED.value
    """:class:`EndReason` value."""
    tool_errors: int = 0
    """Number of malformed or failed tool calls in the episode."""
    tool_calls: int = 0
    """Number of tool calls the student made."""
    task: str = ""
    """Task name (``tool_math``, ``code``, ...)."""
    prompt_id: str = ""
    """Identifier of the task item; rollouts of the same prompt share it."""
    sample_index: int = 0
    """Index g of this rollout among the G samples of its prompt."""
    step: int = 0
    """Training step that produced the episode (-1 for evaluation or gold data)."""
    teacher_logprobs: list[float | None] | None = None
    """[T] teacher log-prob of each token given its prefix; None at position 0 or if unscored."""
    entropy: list[float | None] | None = None
    """[T] student next-token entropy (nats) at each model token; None elsewhere or if not
    computed. The ``hf`` sampler records it while sampling; for other samplers (which give
    none) the trainer fills it in from its own forward before the update (evaluation episodes
    keep None)."""
    trainer_logprobs: list[float | None] | None = None
    """[T] log-prob of each model token under the trainer's own forward of the sampling policy,
    recomputed before the update when another engine sampled the episode (``sampler`` is not
    ``hf``); ``logprobs`` stay the sampler's, so the two show the mismatch token by token. None
    elsewhere; the whole field is None when nothing was recomputed."""
    sampler: str = "hf"
    """Generation backend that sampled the model tokens (``hf`` or ``vllm``); files written
    before this field existed were all sampled by ``hf``."""
    images: list[ImageRecord] = field(default_factory=list)
    """Images of the episode with their placeholder token spans."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form numbers and text from the environment (answers, verifier details)."""
    schema_version: int = SCHEMA_VERSION
    pixel_inputs: Any = field(default=None, repr=False, compare=False)
    """In memory only, never written: the :class:`reopold_agent.vision.VisionInputs` (pixel
    patches, grids, resized images) of ``images``, shared by the student's generation, the
    teacher and the update. A reloaded trajectory gets them back from its stored images with
    :func:`reopold_agent.vision.storage.load_pixel_inputs`."""

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        lengths = {
            "source": len(self.source),
            "turn": len(self.turn),
            "loss_mask": len(self.loss_mask),
            "logprobs": len(self.logprobs),
        }
        if self.teacher_logprobs is not None:
            lengths["teacher_logprobs"] = len(self.teacher_logprobs)
        if self.entropy is not None:
            lengths["entropy"] = len(self.entropy)
        if self.trainer_logprobs is not None:
            lengths["trainer_logprobs"] = len(self.trainer_logprobs)
        bad = {k: v for k, v in lengths.items() if v != n}
        for image in self.images:
            if not 0 <= image.token_start < image.token_end <= n:
                bad[f"images[{image.path}]"] = (image.token_start, image.token_end)
        if bad:
            raise ValueError(f"trajectory per-token fields must have length {n} (token_ids); got {bad}")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_model_tokens(self) -> int:
        return sum(self.loss_mask)

    def check_pixel_inputs(self) -> None:
        """Raise ValueError unless ``pixel_inputs`` holds exactly the trajectory's images."""
        have = self.pixel_inputs.num_images if self.pixel_inputs is not None else 0
        if have != len(self.images):
            raise ValueError(f"trajectory {self.prompt_id!r} has {len(self.images)} images but pixel inputs for "
                             f"{have}; reload them with reopold_agent.vision.storage.load_pixel_inputs")

    def check_masks(self) -> None:
        """Raise ValueError unless loss_mask is 1 exactly on model tokens."""
        for t, (src, m) in enumerate(zip(self.source, self.loss_mask)):
            if (src == TokenSource.MODEL.value) != (m == 1):
                raise ValueError(
                    f"token {t} has source {src!r} but loss_mask {m}: only model tokens carry loss"
                )
