"""One training step's policy update: mini-batches, micro-batches, objective, optimiser.

The rollout batch is split into ``mini_batches`` optimiser steps; each mini-batch is processed
in micro-batches of ``micro_batch_rows`` trajectories with gradient accumulation. REOPOLD's
entropy threshold and loss normaliser are fixed over the configured scope (the mini-batch or the
whole step, gathered across processes) *before* any micro-batch runs, so splitting a mini-batch
into micro-batches never changes the loss (the micro-batch losses sum to the mini-batch loss).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from .activation_checkpointing import checkpointing_in_effect
from .batching import TrainBatch
from .objectives import LossScope, ObjectiveInputs, get_objective, loss_scope
from .sequence_scoring import as_scorer
from .shared_prefix import first_scored_positions, prefix_order, rows_by_prefix
from .step_stats import StepStats
from .train_config import ObjectiveConfig, TrainLoopConfig

Gather = Callable[[Tensor], Tensor]
"""Concatenates a 1-D tensor across processes (identity in a single process)."""


def objective_config(settings: ObjectiveConfig, total_steps: int) -> Any:
    """The config dataclass the chosen objective function expects."""
    if settings.name == "reopold":
        return dataclasses.replace(settings.reopold, switch_step=settings.switch_step(total_steps))
    if settings.name in ("rkl", "rkl_sg"):
        return settings.rkl
    if settings.name == "grpo":
        return settings.grpo
    from .objectives import SftConfig

    return SftConfig()


def policy_update(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batch: TrainBatch,
    *,
    step: int,
    settings: ObjectiveConfig,
    optim: TrainLoopConfig,
    total_steps: int,
    backward: Callable[[Tensor], None],
    clip_grad: Callable[[float], Tensor],
    gather: Gather = lambda x: x,
    chunk_rows: int = 1024,
    generator: torch.Generator | None = None,
    vision: Any = None,
    no_sync: Callable[[], ContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Run the optimiser steps of one training step on ``batch`` and return its statistics over
    every micro-batch and process (:mod:`reopold_agent.step_stats`).

    ``model`` is the student's :class:`~reopold_agent.sequence_scoring.SequenceScorer` as the
    engine wrapped it (DDP/FSDP synchronise its gradients in its backward), or a bare causal LM
    in a single process. ``no_sync`` suspends that synchronisation: it wraps every micro-batch
    but the last of each mini-batch, so gradients cross processes once per optimiser step.
    ``vision`` (a :class:`~reopold_agent.vision.VisionProcessor`) builds the pixel inputs and 3D
    positions of each micro-batch for a vision-language student; None for text students.
    Layers with activation checkpointing switched on recompute their activations in backward
    (:func:`~reopold_agent.activation_checkpointing.checkpointing_in_effect`).
    A scorer with ``shared_prefix`` on scores the rows of a micro-batch that share a prompt with
    that prompt encoded once; the rows of each mini-batch are first ordered so that they sit
    next to each other (the loss does not depend on the micro-batch split).

    Raises:
        ValueError: ``batch`` has fewer rows than ``optim.mini_batches`` or a number of rows
            they do not divide (each optimiser step would see a different share).
    """
    fn = get_objective(settings.name)
    config = objective_config(settings, total_steps)
    scorer = as_scorer(model)
    device = next(scorer.parameters()).device
    groups = (rows_by_prefix(batch.input_ids_BT, first_scored_positions(batch.valid_BT))
              if optim.mini_batch_split == "prompts" else None)
    mini_batches = split_exactly(batch.num_rows, optim.mini_batches, generator=generator, groups=groups)
    totals = StepStats()
    step_scope = _loss_scope(batch, settings, config, step, gather) if settings.selection_scope == "step" else None
    shares_prefix = getattr(getattr(scorer, "module", scorer), "shared_prefix", False)
    with checkpointing_in_effect(scorer):
        for mini_rows in mini_batches:
            mini = batch.select(mini_rows)
            if settings.entropy_source == "current":
                mini.current_entropy_BT = _current_entropy(scorer, mini, optim.micro_batch_rows, chunk_rows, device,
                                                           vision)
            scope = step_scope or _loss_scope(mini, settings, config, step, gather)
            rows = (prefix_order(mini.input_ids_BT, first_scored_positions(mini.valid_BT)) if shares_prefix
                    else torch.arange(mini.num_rows))  # the loss does not depend on how rows are split
            micro_batches = rows.split(optim.micro_batch_rows)
            for index, micro_rows in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                with contextlib.nullcontext() if last else no_sync():
                    loss, stats = _micro_loss(scorer, fn, config, mini.select(micro_rows).to(device), step=step,
                                              scope=scope, chunk_rows=chunk_rows, vision=vision)
                    backward(loss)
                totals.add(stats)
            totals.add({"train/grad_norm": float(clip_grad(optim.grad_clip))})
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return {**totals.result(gather, optimizer_steps=optim.mini_batches), "train/lr": float(scheduler.get_last_lr()[0])}


def split_exactly(num_rows: int, parts: int, *, generator: torch.Generator | None = None,
                  groups: list[list[int]] | None = None) -> list[Tensor]:
    """``parts`` disjoint row-index tensors of ``num_rows // parts`` rows each, covering all rows.

    Without ``groups``: a seeded permutation of the rows when ``parts > 1`` (``generator``), the
    rows in order otherwise. With ``groups`` (row lists, e.g. a prompt's rollouts): the groups in
    a seeded order, their rows listed group by group and cut into equal parts, so that a group
    stays in one part whenever the group sizes allow (always with equal groups whose count
    ``parts`` divides).

    Raises:
        ValueError: ``parts`` does not divide ``num_rows`` (a ``Tensor.chunk`` would return
            fewer or uneven parts: fewer optimiser steps than configured).
    """
    if num_rows % parts:
        raise ValueError(f"{num_rows} rows cannot be split into {parts} equal mini-batches; make "
                         "train.mini_batches divide the rows each process trains on")
    if parts == 1:
        order = torch.arange(num_rows)
    elif groups is None:
        order = torch.randperm(num_rows, generator=generator)
    else:
        order = torch.tensor([b for g in torch.randperm(len(groups), generator=generator).tolist()
                              for b in groups[g]], dtype=torch.long)
    return list(order.split(num_rows // parts))


def _micro_loss(scorer, fn, config, micro: TrainBatch, *, step: int, scope: LossScope, chunk_rows: int,
                vision: Any) -> tuple[Tensor, dict[str, float]]:
    """The objective's loss and stats on one micro-batch (already on the model's device)."""
    logp_BT, _ = scorer(micro.input_ids_BT, micro.attention_mask_BT, chunk_rows=chunk_rows,
                        extra_inputs=forward_inputs(micro, vision), first_scored_B=first_scored_positions(micro.valid_BT))
    inputs = ObjectiveInputs(
        logprobs=logp_BT, loss_mask=micro.valid_BT, old_logprobs=micro.old_logprobs_BT,
        teacher_logprobs=micro.teacher_logprobs_BT, entropy=micro.objective_entropy_BT,
        advantages=micro.advantages_B, entropy_threshold=scope.entropy_threshold, normalizer=scope.normalizer,
        token_weights=micro.token_weights_BT,
    )
    return fn(inputs, step=step, config=config)


def _loss_scope(batch: TrainBatch, settings: ObjectiveConfig, config: Any, step: int,
                gather: Gather) -> LossScope:
    """The objective's entropy threshold and loss normaliser over ``batch`` and all processes."""
    inputs = ObjectiveInputs(
        logprobs=batch.old_logprobs_BT, loss_mask=batch.valid_BT, old_logprobs=batch.old_logprobs_BT,
        teacher_logprobs=batch.teacher_logprobs_BT, entropy=batch.objective_entropy_BT,
    )
    return loss_scope(settings.name, inputs, step=step, config=config, gather=gather)


@torch.no_grad()
def _current_entropy(scorer, mini: TrainBatch, rows: int, chunk_rows: int, device, vision=None) -> Tensor:
    """Entropy of the current policy at every position (no gradient), [B, T] on CPU."""
    out = torch.zeros_like(mini.behaviour_entropy_BT)
    for micro_rows in torch.arange(mini.num_rows).split(rows):
        micro = mini.select(micro_rows).to(device)
        _, ent_BT = scorer(micro.input_ids_BT, micro.attention_mask_BT, with_entropy=True, chunk_rows=chunk_rows,
                           extra_inputs=forward_inputs(micro, vision))
        out[micro_rows, : ent_BT.shape[1]] = ent_BT.cpu()
    return out


def forward_inputs(batch: TrainBatch, vision: Any) -> dict[str, Tensor] | None:
    """Extra model inputs of a (micro-)batch: pixel values, grids and 3D positions, or None."""
    if vision is None:
        if batch.pixel_inputs is not None:
            raise ValueError("the batch holds images but the student is a text-only model")
        return None
    rows = batch.pixel_inputs or [None] * batch.num_rows
    return vision.forward_inputs(rows, batch.input_ids_BT, batch.attention_mask_BT)
