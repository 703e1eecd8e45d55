"""``reopold-agent eval``: held-out accuracy and the test-time scaling curve of a model.

The student (and, with ``--with-teacher``, the teacher on the same problems and settings) plays
the eval split: one greedy episode per problem, then ``eval.samples`` sampled ones. The metrics
are printed as JSON on stdout. With ``--output-dir`` the command also writes there:

* ``eval_metrics.json`` (what was printed) and ``eval_trajectories.jsonl`` (every episode,
  student then teacher, viewable with ``reopold-agent replay``);
* ``test_time_scaling.csv`` / ``.md``: pass@k and maj@k for k = 1, 2, 4, ..., ``eval.samples``
  with the generated tokens and wall seconds per problem that k samples cost;
* ``test_time_scaling.png``: those curves against tokens per problem, one colour per model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .commands import (
    _note,
    avoid_cudnn_attention,
    build_sandbox,
    fit_eval_to_split,
    load_model,
    load_tokenizer,
    load_vision,
    make_env_factory,
    model_dtypes,
    resolve_model_paths,
    rollout_engine,
)
from .train_config import TrainConfig
from .train_setup import run_device


def eval_command(config: TrainConfig, *, cache_dir: Path, output_dir: Path | None = None,
                 with_teacher: bool = False) -> int:
    """Evaluate the student (and the teacher with ``with_teacher``); see the module docstring."""
    from .eval_scaling import plot_scaling, write_scaling_table
    from .trajectory_io import write_trajectories

    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--output-dir {output_dir}: {exc.strerror or exc}") from None
    avoid_cudnn_attention()
    sandbox = build_sandbox(config)
    try:
        student_path, teacher_path = resolve_model_paths(config, cache_dir, need_teacher=with_teacher,
                                                         sandbox=sandbox)
        make_eval_env = make_env_factory(config, sandbox, "eval")
        config = fit_eval_to_split(config, make_eval_env, log=_note)
        roles = [("student", student_path)] + ([("teacher", teacher_path)] if with_teacher else [])
        results = {role: evaluate_model(config, path, role, make_eval_env) for role, path in roles}
    finally:
        sandbox.close()
    report = {"model": student_path, **results["student"].metrics}
    if with_teacher:
        report["teacher"] = {"model": teacher_path, **results["teacher"].metrics}
    text = json.dumps(report, indent=2)
    print(text)
    if output_dir is not None:
        (output_dir / "eval_metrics.json").write_text(text + "\n")
        episodes = [t for result in results.values() for t in result.trajectories]
        write_trajectories(output_dir / "eval_trajectories.jsonl", episodes, append=False)
        written = ["eval_metrics.json", "eval_trajectories.jsonl"]
        curves = {role: result.scaling for role, result in results.items() if result.scaling}
        if curves:
            written += [p.name for p in write_scaling_table(curves, output_dir)]
            written.append(plot_scaling(curves, output_dir / "test_time_scaling.png").name)
        _note(f"wrote {', '.join(written)} ({len(episodes)} episodes) to {output_dir}")
    return 0


@dataclass
class ModelEvaluation:
    """One model's evaluation."""

    metrics: dict[str, float]
    """``eval/...`` metrics of :func:`~reopold_agent.evaluation.evaluate`."""
    trajectories: list
    """Every episode, the greedy ones first."""
    scaling: list
    """:class:`~reopold_agent.eval_scaling.ScalingPoint` per k; empty without sampled episodes."""


def evaluate_model(config: TrainConfig, path: str, role: str, make_eval_env: Any) -> ModelEvaluation:
    """Load the model at ``path`` and play the eval problems of ``config`` with it."""
    from .evaluation import evaluate, sampled_scaling

    device = run_device(config)
    _, low, _ = model_dtypes(config)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=low, role=role, trust_remote_code=config.model.trust_remote_code).to(device)
    vision = load_vision(model, path, config)
    engine = rollout_engine(model, tokenizer, config, vision, sampler=config.rollout.backend, path=path)
    problems = list(range(config.eval.num_problems))
    metrics, trajectories = evaluate(engine, make_eval_env, problems, samples=config.eval.samples,
                                     greedy=config.eval.greedy, batch_episodes=config.eval.batch_episodes,
                                     seed=config.train.seed + 7, top_p=config.eval.top_p)
    sampled = trajectories[len(problems):] if config.eval.greedy else trajectories
    scaling = []
    if sampled:
        scaling = sampled_scaling(sampled, metrics.get("eval/sampled_seconds_per_token", 0.0),
                                  seed=config.train.seed)
    return ModelEvaluation(metrics, trajectories, scaling)
