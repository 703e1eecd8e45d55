"""Settings of the rollout engine (the ``rollout:`` section of a run configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class VLLMConfig:
    """Settings of the vLLM generation backend (``rollout.vllm``; used with ``rollout.backend: vllm``)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations in vLLM; ``auto``: the run's ``model.dtype`` (bfloat16 on a GPU,
    float32 on the CPU), the precision the trainer recomputes log-probs in."""
    gpu_memory_utilization: float = 0.5
    """GPU only: share of GPU memory vLLM may take (weights and KV cache). The student, its
    optimiser and the teacher share the same GPU, so the default leaves half to them."""
    max_model_len: int | None = None
    """Longest sequence vLLM plans for (prompt and new tokens); null: ``rollout.max_episode_tokens``."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prefixes (the G rollouts of a prompt, earlier turns)."""
    enforce_eager: bool | None = None
    """Run the model eagerly, without compilation or CUDA graphs; null: eager on the CPU (where
    compiling costs more than short runs gain), graphs on a GPU."""
    enable_sleep_mode: bool = True
    """GPU only: free vLLM's KV cache and move its weights to host memory while the trainer
    scores and updates, and wake it for the next rollout (ignored on the CPU)."""
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spreads the student over."""
    cpu_kvcache_gib: float = 1.0
    """CPU only: GiB of host memory for vLLM's KV cache."""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"rollout.vllm.max_model_len must be >= 2 or null, got {self.max_model_len}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"rollout.vllm.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not self.cpu_kvcache_gib > 0:
            raise ValueError(f"rollout.vllm.cpu_kvcache_gib must be > 0, got {self.cpu_kvcache_gib}")


@dataclass
class RolloutConfig:
    """How episodes are sampled."""

    group_size: int = 4
    """G: rollouts per prompt."""
    max_turn_tokens: int = 256
    """Token budget of a single assistant turn."""
    max_episode_tokens: int = 1024
    """Token budget of the whole episode, prompt and tool outputs included."""
    max_turns: int = 8
    """Engine-side cap on assistant turns (the environment's tool-round cap usually fires first)."""
    temperature: float = 1.0
    """Sampling temperature (paper: 1.0; raising it adds tokens the teacher dislikes)."""
    top_p: float = 1.0
    top_k: int = 0
    stop_at_tool_call_end: bool = True
    """Stop a turn right after ``</tool_call>`` (one tool call per turn) besides end of turn."""
    render_tools: bool = False
    """Render tool schemas through the chat template's ``tools=``; off by default because the
    built-in environments describe their tools in a short system prompt (the full JSON dump
    doubles tiny-model prompts)."""
    tool_workers: int = 32
    """Threads running environment steps (tool calls) concurrently; each episode's step is
    submitted as soon as its turn is generated, and the episode continues when its step is done."""
    tool_batch_wait_s: float = 0.02
    """After the first pending tool step finishes, wait up to this long for others finishing
    almost together, so they share the next generation batch (0 = continue at once). Larger
    values mean fuller generation batches but more latency per turn; a slow tool never delays
    other episodes by more than this."""
    tool_batch_gap_s: float | None = None
    """Within that wait, stop as soon as no further step has finished for this long (None: no
    such stop). With a long ``tool_batch_wait_s`` it lets a burst of tool calls that finish one
    after another share one batch, while a slow tool delays the others by at most this gap."""
    torch_threads: int | None = None
    """CPU only: torch threads for the student's decode steps (None = as ``train.torch_threads``).
    A small model's decode steps are short ops; while tools run on the same cores, one thread
    decodes faster than several that wait on each other (prefills, scoring and updates keep
    theirs)."""
    max_images_per_episode: int = 8
    """Images one episode may hold (prompt and tool outputs); a tool's further images are
    replaced by a text note saying so. Bounds the pixel memory of long image-tool episodes."""
    image_min_pixels: int = 3136
    """Vision-language students: smaller images are enlarged to at least this many pixels."""
    image_max_pixels: int = 401408
    """Vision-language students: larger images are shrunk to at most this many pixels (with
    patch 14 and merge 2, 401,408 pixels = 512 image tokens)."""
    backend: Literal["hf", "vllm"] = "hf"
    """Who samples the student's turns: ``hf``, a decode loop over the trainer's own model, or
    ``vllm``, vLLM's offline engine in the same process (text students only), whose weights
    follow the trainer's after every update. With ``vllm`` the trainer recomputes the behaviour
    log-probs and entropies with its own model before each update and logs the mismatch."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the ``vllm`` backend."""

    def __post_init__(self) -> None:
        if self.max_images_per_episode < 0:
            raise ValueError(f"rollout.max_images_per_episode must be >= 0, got {self.max_images_per_episode}")
        if not 0 < self.image_min_pixels <= self.image_max_pixels:
            raise ValueError(f"rollout.image_min_pixels ({self.image_min_pixels}) must be positive and at most "
                             f"rollout.image_max_pixels ({self.image_max_pixels})")
        for name in ("group_size", "max_turn_tokens", "max_episode_tokens", "max_turns", "tool_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"rollout.torch_threads must be >= 1 or null, got {self.torch_threads}")
        if not self.tool_batch_wait_s >= 0:
            raise ValueError(f"rollout.tool_batch_wait_s must be >= 0, got {self.tool_batch_wait_s}")
        if self.tool_batch_gap_s is not None and not self.tool_batch_gap_s > 0:
            raise ValueError(f"rollout.tool_batch_gap_s must be > 0 or null, got {self.tool_batch_gap_s}")
        if self.backend == "vllm" and self.vllm.max_model_len is not None \
                and self.vllm.max_model_len < self.max_episode_tokens:
            raise ValueError(f"rollout.vllm.max_model_len ({self.vllm.max_model_len}) must be at least "
                             f"rollout.max_episode_tokens ({self.max_episode_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("rollout.temperature must be >= 0 and rollout.top_p in (0, 1]")
