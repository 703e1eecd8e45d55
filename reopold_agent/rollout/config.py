"""Settings of the rollout engine (the ``rollout:`` section of a run configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config_ranges import check_ranges, ranged


@dataclass
class VLLMConfig:
    """Settings of the vLLM generation backend (``rollout.vllm``; used with ``rollout.backend: vllm``)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations in vLLM; ``auto``: the run's ``model.dtype`` (bfloat16 on a GPU,
    float32 on the CPU), the precision the trainer recomputes log-probs in."""
    gpu_memory_utilization: float = ranged(0.5, gt=0, le=1)
    """GPU only: share of GPU memory vLLM may take (weights and KV cache). The student, its
    optimiser and the teacher share the same GPU, so the default leaves half to them."""
    max_model_len: int | None = ranged(None, ge=2)
    """Longest sequence vLLM plans for (prompt and new tokens); null: ``rollout.max_episode_tokens``."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prefixes (the G rollouts of a prompt, earlier turns)."""
    enforce_eager: bool | None = None
    """Run the model eagerly, without compilation or CUDA graphs; null: eager on the CPU (where
    compiling costs more than short runs gain), graphs on a GPU."""
    enable_sleep_mode: bool = True
    """GPU only: free vLLM's KV cache and move its weights to host memory while the trainer
    scores and updates, and wake it for the next rollout (ignored on the CPU)."""
    tensor_parallel_size: int = ranged(1, ge=1)
    """GPUs one vLLM engine spreads the student over."""
    cpu_kvcache_gib: float = ranged(1.0, gt=0)
    """CPU only: GiB of host memory for vLLM's KV cache."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class RolloutConfig:
    """How episodes are sampled."""

    group_size: int = ranged(4, ge=1)
    """G: rollouts per prompt."""
    max_turn_tokens: int = ranged(256, ge=1)
    """Token budget of a single assistant turn."""
    max_episode_tokens: int = ranged(1024, ge=1)
    """Token budget of the whole episode, prompt and tool outputs included."""
    max_turns: int = ranged(8, ge=1)
    """Engine-side cap on assistant turns (the environment's tool-round cap usually fires first)."""
    temperature: float = ranged(1.0, ge=0)
    """Sampling temperature (paper: 1.0; raising it adds tokens the teacher dislikes; 0: greedy)."""
    top_p: float = ranged(1.0, gt=0, le=1)
    """Nucleus sampling: keep the most likely tokens up to this probability mass (1: off)."""
    top_k: int = ranged(0, ge=0)
    """Keep only the k most likely tokens (0: off)."""
    stop_at_tool_call_end: bool = True
    """Stop a turn right after ``</tool_call>`` (one tool call per turn) besides end of turn."""
    render_tools: bool = False
    """Render tool schemas through the chat template's ``tools=``; off by default because the
    built-in environments describe their tools in a short system prompt (the full JSON dump
    doubles tiny-model prompts)."""
    tool_workers: int = ranged(32, ge=1)
    """Threads running environment steps (tool calls) concurrently; each episode's step is
    submitted as soon as its turn is generated, and the episode continues when its step is done."""
    tool_batch_wait_s: float = ranged(0.02, ge=0)
    """After the first pending tool step finishes, wait up to this long for others finishing
    almost together, so they share the next generation batch (0 = continue at once). Larger
    values mean fuller generation batches but more latency per turn; a slow tool never delays
    other episodes by more than this."""
    tool_batch_gap_s: float | None = ranged(None, gt=0)
    """Within that wait, stop as soon as no further step has finished for this long (None: no
    such stop). With a long ``tool_batch_wait_s`` it lets a burst of tool calls that finish one
    after another share one batch, while a slow tool delays the others by at most this gap."""
    torch_threads: int | None = ranged(None, ge=1)
    """CPU only: torch threads for the student's decode steps (None = as ``train.torch_threads``).
    A small model's decode steps are short ops; while tools run on the same cores, one thread
    decodes faster than several that wait on each other (prefills, scoring and updates keep
    theirs)."""
    max_images_per_episode: int = ranged(8, ge=0)
    """Images one episode may hold (prompt and tool outputs); a tool's further images are
    replaced by a text note saying so. Bounds the pixel memory of long image-tool episodes."""
    image_min_pixels: int = ranged(3136, ge=1)
    """Vision-language students: smaller images are enlarged to at least this many pixels."""
    image_max_pixels: int = ranged(401408, ge=1)
    """Vision-language students: larger images are shrunk to at most this many pixels (with
    patch 14 and merge 2, 401,408 pixels = 512 image tokens)."""
    static_cache: bool = False
    """``hf`` backend: decode over a static KV cache allocated once per batch, every decode step
    of the same shapes (same tokens and log-probs as the growing cache up to float rounding;
    text students only)."""
    compile_decode: bool = False
    """``hf`` backend: compile the decode step (``torch.compile``, CUDA graphs on a GPU); needs
    ``static_cache``. Compiling costs a minute or more at the first batch of each shape."""
    refill_rows: bool = False
    """``hf`` backend, text students over the growing cache: a row leaves the decode batch as
    soon as its turn stops, and episodes whose tool results came back join the running batch
    instead of waiting for its longest row (continuous batching). Same tokens and log-probs
    as without, up to float rounding."""
    backend: Literal["hf", "vllm"] = "hf"
    """Who samples the student's turns: ``hf``, a decode loop over the trainer's own model, or
    ``vllm``, vLLM's offline engine in the same process (text students only), whose weights
    follow the trainer's after every update. With ``vllm`` the trainer recomputes the behaviour
    log-probs and entropies with its own model before each update and logs the mismatch."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the ``vllm`` backend."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.compile_decode and not self.static_cache:
            raise ValueError("rollout.compile_decode needs rollout.static_cache: true (a growing cache changes the "
                             "decode step's shapes every token)")
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"rollout.image_min_pixels ({self.image_min_pixels}) must be at most "
                             f"rollout.image_max_pixels ({self.image_max_pixels})")
        if self.backend == "vllm" and self.vllm.max_model_len is not None \
                and self.vllm.max_model_len < self.max_episode_tokens:
            raise ValueError(f"rollout.vllm.max_model_len ({self.vllm.max_model_len}) must be at least "
                             f"rollout.max_episode_tokens ({self.max_episode_tokens})")
