"""The distillation loop: rollout -> teacher scoring -> batch -> objective -> optimiser -> logs.

The trainer orchestrates and computes nothing itself: each stage is a call into a module tested
on its own. Everything it needs (models, environments, accelerator, logger) is built by the
caller (:mod:`reopold_agent.cli`) and passed in.

Data order is a pure function of ``(train.seed, step)``: step k plays positions
``k*P .. k*P+P-1`` of a seeded stream over the train split, reshuffled every pass
(:mod:`reopold_agent.data_order`), with sampling seeds derived from the step, so a resumed run
replays exactly the prompts an uninterrupted run would have.

Rollouts, evaluations and the update all run under the accelerator's autocast (bf16 on a GPU),
so the student samples in the precision in which the update recomputes its log-probs; in
float32 on the CPU autocast is off and nothing changes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from .batching import TrainBatch, collate
from .behaviour import mismatch_stats, record_recomputed, recompute_behaviour, truncated_is_weights
from .checkpoint import CheckpointError, latest_checkpoint, load_newest_loadable, save_checkpoint, set_aside
from .cross_process import EngineUpdate
from .data_order import train_item_index
from .parallel_evaluation import evaluate_in_parallel
from .interruption import TrainingInterrupted
from .policy_update import policy_update
from .rollout.engine import EpisodeRequest, RolloutEngine
from .run_directory import RunDirectoryError, describe_os_error
from .run_logging import RunLogger, is_evaluation_record
from .sequence_scoring import SequenceScorer
from .sharded_state import gather_full_optimizer_state, gather_full_weights, is_sharded
from .teacher_scoring import TeacherBackend, TeacherError
from .train_config import TrainConfig, check_batch_shape
from .trajectory import Trajectory
from .trajectory_io import trajectory_from_json, trajectory_to_json
from .vision.storage import save_trajectory_images


@dataclass
class TrainerParts:
    """Components the trainer orchestrates (built by the CLI or a user script)."""

    student: Any
    """The student causal LM: it samples the rollouts and is what checkpoints save."""
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    engine: RolloutEngine
    teacher: TeacherBackend | None
    """Scores the trajectories (``hf``, ``vllm`` or ``server`` backend); None only for objectives
    that need no teacher (``grpo``)."""
    make_train_env: Callable[[], Any]
    make_eval_env: Callable[[], Any]
    logger: RunLogger
    accelerator: Any
    teacher_engine: RolloutEngine | None = None
    """Plays episodes with the teacher: its evaluation (``eval.teacher``) and, for the ``sft``
    objective, the training rollouts; None when neither is asked for."""
    scorer: Any = None
    """The student's :class:`~reopold_agent.sequence_scoring.SequenceScorer` as
    ``accelerator.prepare`` wrapped it (DDP: its backward synchronises the gradients), sharing
    the student's parameters; None in a single process (a bare scorer of ``student``)."""


class Trainer:
    """Runs ``config.train.steps`` steps of on-policy distillation."""

    def __init__(self, config: TrainConfig, parts: TrainerParts, *,
                 on_step: Callable[[int, dict[str, float]], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 critical: Callable[[], ContextManager[Any]] | None = None,
                 run_config: dict[str, Any] | None = None) -> None:
        """``on_step(step, metrics)`` receives every metrics row; ``log`` one-line notes (resume,
        fallback, interruption); ``critical()`` guards the parts of a step that must not be cut
        (the update and its logging, a save): the CLI passes
        :meth:`reopold_agent.interruption.StopSignals.deferred`. ``run_config`` (the resolved
        configuration) is written to ``config.yaml`` once training starts, after a resume has
        loaded its checkpoint, so a refused resume leaves the run's file as it was."""
        self.config = config
        self.run_config = run_config
        self.parts = parts
        self.on_step = on_step or (lambda step, metrics: None)
        self.log = log or (lambda message: None)
        self.critical = critical or contextlib.nullcontext
        self._completed = self._saved = 0  # steps done, and the step of the newest checkpoint
        self._train_envs: list[Any] = []
        acc = parts.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        check_batch_shape(config, self.world)
        self.scorer = parts.scorer if parts.scorer is not None else SequenceScorer(parts.student)
        if self.world > 1 and type(self.scorer) is SequenceScorer:
            raise ValueError(f"with {self.world} processes the student's scorer must be wrapped by the engine: pass "
                             "scorer=accelerator.prepare(SequenceScorer(student)) so its gradients are synchronised")
        self.update = EngineUpdate(acc, self.scorer)

    def train(self, *, resume: bool = False, stop_after: int | None = None) -> dict[str, float]:
        """Train from step 0 (or the newest loadable checkpoint with ``resume``); returns the
        last metrics.

        ``stop_after`` ends the session after that many steps (the run stays resumable). A
        :class:`~reopold_agent.interruption.TrainingInterrupted` (Ctrl-C, SIGTERM) saves a
        checkpoint of the last complete step, unless it is saved already, and propagates.
        """
        cfg, parts = self.config, self.parts
        start, kept = self._resume() if resume else (0, [])
        self._completed = self._saved = start
        if self.run_config is not None and parts.accelerator.is_main_process:
            parts.logger.save_config(self.run_config)
        metrics: dict[str, float] = {}
        try:
            self._opening_evaluations(start, kept)
            for step in range(start, cfg.train.steps):
                if stop_after is not None and step - start >= stop_after:
                    return metrics
                metrics = self.train_step(step)
                done = step + 1
                if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                    self._save(done)
                if self._evaluation_due(done):
                    metrics.update(self._evaluate(done))
        except TrainingInterrupted as exc:
            self._save_on_interrupt(exc)
            parts.logger.close()
            raise
        except RunDirectoryError as exc:  # a full disk: say what is safe
            parts.logger.close()
            raise RunDirectoryError(f"{exc}; {self._checkpoint_note()}") from None
        except TeacherError as exc:  # scoring comes before the update: nothing of the step was written
            parts.logger.close()
            raise type(exc)(f"{exc}; step {self._completed} was not applied, {self._checkpoint_note()}") from None
        parts.logger.close()
        return metrics

    def _checkpoint_note(self) -> str:
        last = latest_checkpoint(self.parts.logger.run_dir)
        if last is None:
            return "no checkpoint was saved yet"
        return f"the last complete checkpoint, {last.name}, is intact: continue with --resume"

    def _evaluation_due(self, step: int) -> bool:
        every = self.config.eval.every
        return bool(every and step % every == 0) or step == self.config.train.steps

    def _opening_evaluations(self, start: int, kept: list[dict[str, Any]]) -> None:
        """Teacher and student at step 0; on resume, the evaluation at ``start`` if it was due
        and the earlier session stopped before writing it."""
        cfg, parts = self.config, self.parts
        if start == 0:
            if cfg.eval.teacher and parts.teacher_engine is not None:
                self._evaluate(0, engine=parts.teacher_engine, prefix="eval/teacher_")
            self._evaluate(0)
        elif self._evaluation_due(start) and not any(
                r["step"] == start and is_evaluation_record(r) and not any(k.startswith("eval/teacher_") for k in r)
                for r in kept):
            self._evaluate(start)

    def _save_on_interrupt(self, exc: TrainingInterrupted) -> None:
        """After a stop signal: save the last complete step unless its checkpoint exists."""
        step = self._completed
        if self.world > 1:
            self.log(f"stopped by {exc.name}; a multi-process run saves nothing on a signal: "
                     f"--resume continues from the last saved checkpoint (step {self._saved})")
        elif step == 0:
            self.log(f"stopped by {exc.name} before the first step completed; nothing to save")
        elif step > self._saved:
            self.log(f"stopped by {exc.name}: saving a checkpoint of step {step}, the last complete one ...")
            self._save(step)
            self.log(f"saved checkpoint step {step}; continue with --resume")
        else:
            self.log(f"stopped by {exc.name}; the checkpoint of step {step} is saved; continue with --resume")

    def train_step(self, step: int) -> dict[str, float]:
        """One step: play, score, update; logs and returns the step's metrics."""
        cfg, parts = self.config, self.parts
        acc = parts.accelerator
        t0 = time.perf_counter()
        with acc.autocast():  # sample in the precision the update recomputes the log-probs in
            trajectories = self._rollout(step)
        self._rollout_engine.backend.sleep()  # a GPU engine frees its memory for scoring and update
        t1 = time.perf_counter()
        teacher_call = parts.teacher.score(trajectories) if parts.teacher is not None else None
        t2 = time.perf_counter()
        batch = collate(trajectories, pad_token_id=parts.tokenizer.pad_token_id,
                        require_teacher=parts.teacher is not None)
        t_recompute = time.perf_counter()
        behaviour = {} if self._rollout_engine.backend.reports_entropy else self._recompute_behaviour(batch, trajectories)
        t_recompute = time.perf_counter() - t_recompute
        with self.critical():  # a stop signal waits: the update and the step's logs happen whole
            with acc.autocast():
                stats = policy_update(
                    self.scorer, parts.optimizer, parts.scheduler, batch,
                    step=step, settings=cfg.objective, optim=cfg.train, total_steps=cfg.train.steps,
                    backward=self.update.backward, clip_grad=self.update.clip_gradients, gather=self.update.gather,
                    chunk_rows=cfg.model.vocab_chunk_rows,
                    generator=torch.Generator().manual_seed(cfg.train.seed * 100_003 + step),
                    vision=parts.engine.vision, no_sync=self.update.no_sync,
                )
            t3 = time.perf_counter()
            parts.engine.backend.sync_weights(parts.student)
            everyone = self._gather_trajectories(trajectories)
            metrics = {**stats, **behaviour, **rollout_metrics(everyone),
                       **{f"time/rollout_{k}": v for k, v in self._rollout_engine.timings.items()}}
            model_tokens = sum(t.num_model_tokens for t in everyone)
            if behaviour:
                metrics["time/recompute_s"] = t_recompute
            if teacher_call is not None:  # this process's scoring: tokens/s, re-sent requests
                metrics.update(teacher_call.metrics())
            metrics.update({
                "time/rollout_s": t1 - t0, "time/teacher_s": t2 - t1, "time/update_s": t3 - t2 - t_recompute,
                "time/step_s": t3 - t0, "throughput/model_tokens_per_s": model_tokens / max(t3 - t0, 1e-9),
            })
            if acc.is_main_process:
                parts.logger.log_trajectories(f"step_{step:06d}", everyone)
                parts.logger.log_metrics(step, metrics)
            self.on_step(step, metrics)
            self._completed = step + 1
        return metrics

    def _recompute_behaviour(self, batch: TrainBatch, trajectories: list[Trajectory]) -> dict[str, float]:
        """For a sampler with its own copy of the model (vLLM): pi_old and the entropies become the
        trainer's own (one no-grad forward), the mismatch is measured, truncated importance
        weights are set when ``objective.tis_cap`` asks, and the trajectories record both
        (:mod:`reopold_agent.behaviour`). Returns the ``mismatch/`` metrics."""
        cfg, parts = self.config, self.parts
        with parts.accelerator.autocast():
            logp_BT, ent_BT = recompute_behaviour(
                self.scorer, batch, micro_batch_rows=cfg.train.micro_batch_rows,
                chunk_rows=cfg.model.vocab_chunk_rows, device=next(parts.student.parameters()).device)
        valid_BT, sampler_BT = batch.valid_BT, batch.old_logprobs_BT
        stats = mismatch_stats(self.update.gather((logp_BT - sampler_BT)[valid_BT]), cfg.objective.tis_cap)
        if cfg.objective.tis_cap is not None:
            batch.token_weights_BT = truncated_is_weights(logp_BT, sampler_BT, valid_BT, cfg.objective.tis_cap)
        zero = torch.zeros((), dtype=logp_BT.dtype)
        batch.old_logprobs_BT = torch.where(valid_BT, logp_BT, zero)
        batch.behaviour_entropy_BT = torch.where(valid_BT, ent_BT, zero)
        record_recomputed(trajectories, batch, logp_BT, ent_BT)
        return stats

    def _gather_trajectories(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """All processes' trajectories of this step, in rank order (this process's own when alone).

        Each process first stores its own images in the run directory (content-addressed, so
        processes never clash); then the trajectories travel as their JSON lines, without pixels.
        """
        if self.world == 1:
            return trajectories
        from accelerate.utils import gather_object

        save_trajectory_images(self.parts.logger.run_dir, trajectories)
        lines = gather_object([trajectory_to_json(t) for t in trajectories])
        return [trajectory_from_json(line) for line in lines]

    def _rollout(self, step: int) -> list[Trajectory]:
        cfg = self.config
        P, G = cfg.train.prompts_per_step, cfg.rollout.group_size
        mine = [p for p in range(P) if p % self.world == self.rank]
        while len(self._train_envs) < len(mine) * G:
            self._train_envs.append(self.parts.make_train_env())
        num_items = self._train_envs[0].num_items() if hasattr(self._train_envs[0], "num_items") else None

        def options(p: int) -> dict:
            if num_items is None:  # an env without numbered items (a plain gymnasium.Env): the reset seed picks
                return {}
            return {"index": train_item_index(step * P + p, num_items, seed=cfg.train.seed, shuffle=cfg.train.shuffle)}

        requests = [
            EpisodeRequest(seed=_seed(cfg.train.seed, step, p), sample_index=g, options=options(p))
            for p in mine for g in range(G)
        ]
        return self._rollout_engine.run(self._train_envs[:len(requests)], requests,
                                        seed=_seed(cfg.train.seed, step, 10_000 + self.rank), step=step)

    @property
    def _rollout_engine(self) -> RolloutEngine:
        """Who plays the training episodes: the student, or the teacher for ``sft`` (the
        baseline learns from teacher-generated tokens, method section 5)."""
        if self.config.objective.name != "sft":
            return self.parts.engine
        if self.parts.teacher_engine is None:
            raise ValueError("objective 'sft' trains on the teacher's rollouts, but no teacher engine was built")
        return self.parts.teacher_engine

    def _evaluate(self, step: int, *, engine: RolloutEngine | None = None, prefix: str = "eval/") -> dict[str, float]:
        """Every process plays its share of the eval problems; all get the combined metrics, the
        main process logs them with every process's trajectories."""
        cfg, parts = self.config, self.parts
        if cfg.eval.num_problems <= 0:
            return {}
        with parts.accelerator.autocast():  # the policy as it is trained and sampled
            metrics, trajs = evaluate_in_parallel(
                engine or parts.engine, parts.make_eval_env, list(range(cfg.eval.num_problems)),
                accelerator=parts.accelerator,
                store_images=lambda own: save_trajectory_images(parts.logger.run_dir, own),
                samples=cfg.eval.samples, greedy=cfg.eval.greedy, batch_episodes=cfg.eval.batch_episodes,
                seed=cfg.train.seed + 7, step=step, top_p=cfg.eval.top_p,
            )
        if prefix != "eval/":
            metrics = {prefix + k[len("eval/"):]: v for k, v in metrics.items()}
            name = f"eval_teacher_{step:06d}"
        else:
            name = f"eval_{step:06d}"
        if parts.accelerator.is_main_process:
            parts.logger.log_trajectories(name, trajs)
            parts.logger.log_metrics(step, metrics)
        self.on_step(step, metrics)
        return metrics

    def _save(self, step: int) -> None:
        """Checkpoint ``step``; a write failure (full disk) stops with a one-line
        :class:`RunDirectoryError`, the newest complete checkpoint left as it was. A sharded
        student's full weights and optimizer state are first gathered onto the main process."""
        parts = self.parts
        acc = parts.accelerator
        run_dir = parts.logger.run_dir
        weights = optimizer_state = None
        if is_sharded(parts.student):  # a collective: every process sends its shards
            weights = gather_full_weights(parts.student, main_only=True)
            optimizer_state = gather_full_optimizer_state(parts.student, parts.optimizer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            with self.critical():
                try:
                    save_checkpoint(run_dir, step, model=parts.student,
                                    tokenizer=parts.tokenizer, optimizer=parts.optimizer, scheduler=parts.scheduler,
                                    extra={}, keep=self.config.train.keep_checkpoints,
                                    image_processor=getattr(parts.engine.vision, "image_processor", None),
                                    weights=weights, optimizer_state=optimizer_state)
                except OSError as exc:
                    raise RunDirectoryError(f"saving checkpoint step {step}: {describe_os_error(run_dir, exc)}") from None
        acc.wait_for_everyone()
        self._saved = step

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        """Load the newest loadable checkpoint and rewind the run's logs to its step.

        Returns (its step, the metric rows kept, the same on every process); (0, []) when the run
        has no checkpoint.

        Raises:
            RunDirectoryError: the run has complete checkpoints and none loads (named).
        """
        parts = self.parts
        acc = parts.accelerator
        run_dir = parts.logger.run_dir
        try:
            found = load_newest_loadable(run_dir, model=parts.student, optimizer=parts.optimizer,
                                         scheduler=parts.scheduler,
                                         log=self.log if acc.is_main_process else (lambda message: None))
        except CheckpointError as exc:
            raise RunDirectoryError(f"--resume: cannot load checkpoint {exc}") from None
        if found is None:
            self.log(f"no checkpoint in {run_dir}: starting at step 0")
            return 0, []
        step = int(found.state["step"])
        kept: list[dict[str, Any]] = []
        acc.wait_for_everyone()  # every process has read the checkpoints before any is moved
        if acc.is_main_process:
            for bad in found.unreadable:
                self.log(f"moved the unreadable checkpoint aside to {set_aside(bad)}")
            kept = parts.logger.rewind_to(step)
        if self.world > 1:  # only the main process reads the logs; all must agree on what is still due
            from accelerate.utils import broadcast_object_list

            kept = broadcast_object_list([kept])[0]
        parts.engine.backend.sync_weights(parts.student)
        self.log(f"resumed from step {step} ({found.path})")
        return step, kept


def rollout_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Episode-level numbers of one rollout batch under ``rollout/``."""
    n = max(len(trajectories), 1)
    calls = sum(t.tool_calls for t in trajectories)
    return {
        "rollout/reward_mean": sum(t.reward for t in trajectories) / n,
        "rollout/accuracy": sum(t.reward >= 1.0 for t in trajectories) / n,
        "rollout/truncated_frac": sum(t.truncated for t in trajectories) / n,
        "rollout/model_tokens_mean": sum(t.num_model_tokens for t in trajectories) / n,
        "rollout/tool_calls_mean": calls / n,
        "rollout/tool_error_rate": sum(t.tool_errors for t in trajectories) / max(calls, 1),
        "rollout/episodes": float(len(trajectories)),
    }


def _seed(base: int, step: int, slot: int) -> int:
    return (base * 1_000_003 + step * 10_007 + slot) % (2**31 - 1)
