"""Supervised fine-tuning on whole conversations (gold or teacher trajectories).

Used for the cold start of a student (``reopold-agent sft``) and to build the embedded tiny
teacher and student. The loss is token cross-entropy on the assistant tokens only, found with the
chat template's ``{% generation %}`` markers (``return_assistant_tokens_mask``): system, user and
tool tokens never carry loss, exactly as in distillation. For a vision-language student, each
image placeholder is expanded to the image's tokens (loss mask 0) and the conversation keeps its
pixel inputs, exactly as the rollout engine builds them.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from .batching import pad_right
from .lr_schedule import lr_multiplier
from .objectives import ObjectiveInputs, SftConfig, sft_objective
from .sequence_scoring import sequence_logprobs
from .vision.processing import VisionInputs, VisionProcessor, message_images


@dataclass
class SupervisedConfig:
    """Settings of a supervised run."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    stop_after: int | None = None
    """Stop after this many steps of the schedule planned for ``steps`` (a model caught part-way
    through its training, e.g. an embedded student); None runs all ``steps``."""
    autocast_dtype: Literal["bfloat16"] | None = None
    """Mixed precision: the forward pass and loss run under ``torch.autocast`` in this dtype;
    parameters, gradients and optimiser state stay in the model's dtype. None: no autocast."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("supervised steps and batch_size must be >= 1 and lr > 0")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ValueError(f"stop_after must be between 1 and steps={self.steps}, got {self.stop_after}")


@dataclass
class TokenizedConversation:
    """One conversation as ids plus the mask of assistant tokens (T tokens)."""

    input_ids: list[int]
    """[T] ids of the templated conversation."""
    assistant_mask: list[int]
    """[T] 1 on tokens the assistant generated (content, tool calls, end-of-turn)."""
    pixel_inputs: VisionInputs | None = None
    """The conversation's images for a vision-language model, or None."""


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]],
                          tools: list[dict] | None = None, *,
                          vision: VisionProcessor | None = None) -> TokenizedConversation:
    """Template ``messages`` and mark the assistant tokens (expanding images with ``vision``).

    Raises:
        ValueError: the chat template has no ``{% generation %}`` markers (no assistant mask),
            or the conversation has images and no ``vision`` processor is given.
    """
    out = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    if not any(mask):
        raise ValueError("chat template marks no assistant tokens; it needs {% generation %} blocks")
    images = message_images(messages)
    if not images:
        return TokenizedConversation(ids, mask)
    if vision is None:
        raise ValueError("the conversation holds images; a vision-language student (and its processor) is needed")
    features = [vision.encode(image) for image in images]
    expanded, is_image = vision.expand_placeholders(ids, features)
    text_mask = iter(m for t, m in zip(ids, mask) if t != vision.image_token_id)
    expanded_mask = [0 if flag else next(text_mask) for flag in is_image]  # image tokens never carry loss
    return TokenizedConversation(expanded, expanded_mask, VisionInputs.from_features(features))


def supervised_train(
    model: Any,
    examples: list[TokenizedConversation],
    config: SupervisedConfig,
    *,
    pad_token_id: int,
    on_step: Callable[[int, float], None] | None = None,
    vision: VisionProcessor | None = None,
) -> float:
    """Train ``model`` on ``examples`` in place; returns the mean loss of the last 50 steps.

    ``vision`` gives the pixel inputs and 3D positions of examples with images.
    """
    run = SupervisedRun(model, examples, config, pad_token_id=pad_token_id, vision=vision)
    run.advance((config.stop_after or config.steps) - run.step, on_step=on_step)
    return run.finish()


class SupervisedRun:
    """A supervised run that can be advanced step by step, saved and restored.

    The schedule (warm-up, cosine decay) is planned for ``config.steps``; :meth:`advance` trains
    the next steps of it, so a caller can stop on a measured criterion rather than a step count.
    :meth:`snapshot` / :meth:`restore` save and bring back the weights, optimiser, schedule and
    batch sampler, so steps replayed after a restore are the same steps.
    """

    def __init__(self, model: Any, examples: list[TokenizedConversation], config: SupervisedConfig, *,
                 pad_token_id: int, vision: VisionProcessor | None = None) -> None:
        if not examples:
            raise ValueError("no supervised examples")
        self.model, self.examples, self.config = model, examples, config
        self.pad_token_id, self.vision = pad_token_id, vision
        self.rng = random.Random(config.seed)
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_multiplier(
            s, warmup_steps=config.warmup_steps, total_steps=config.steps,
            decay="cosine", final_ratio=0.1))
        self.step = 0
        self.recent: list[float] = []
        """Losses of the last 50 steps."""

    def advance(self, steps: int, *, on_step: Callable[[int, float], None] | None = None) -> None:
        """Train ``steps`` more steps (past the planned schedule the learning rate stays at its final value)."""
        self.model.train()
        for _ in range(steps):
            batch = [self.examples[self.rng.randrange(len(self.examples))] for _ in range(self.config.batch_size)]
            ids, attn, mask = _pad(batch, self.pad_token_id)
            ids, attn = ids.to(self.device), attn.to(self.device)
            extra = (self.vision.forward_inputs([x.pixel_inputs for x in batch], ids, attn)
                     if self.vision is not None else None)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.autocast_dtype is not None):
                logp, _ = sequence_logprobs(self.model, ids, attn, extra_inputs=extra)
                loss, _ = sft_objective(ObjectiveInputs(logprobs=logp, loss_mask=mask.to(self.device)),
                                        step=self.step, config=SftConfig())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.recent = (self.recent + [loss.item()])[-50:]
            if on_step is not None:
                on_step(self.step, self.recent[-1])
            self.step += 1
        self.model.eval()

    def finish(self) -> float:
        """Leave the model in eval mode; returns the mean loss of the last 50 steps."""
        self.model.eval()
        return sum(self.recent) / max(len(self.recent), 1)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything :meth:`advance` changes."""
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": self.rng.getstate(), "step": self.step,
            "recent": self.recent,
        })

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Bring back the state saved by :meth:`snapshot`."""
        snapshot = copy.deepcopy(snapshot)
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.rng.setstate(snapshot["rng"])
        self.step, self.recent = snapshot["step"], snapshot["recent"]


def _pad(batch: list[TokenizedConversation], pad_token_id: int):
    ids, attn = pad_right([x.input_ids for x in batch], pad_token_id)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b, ex in enumerate(batch):
        mask[b, :len(ex.assistant_mask)] = torch.tensor(ex.assistant_mask, dtype=torch.bool)
    mask[:, 0] = False
    return ids, attn, mask
