"""``reopold-agent``: the command line, and the only place that wires components together.

Commands: ``train`` (on-policy distillation), ``sft`` (supervised cold start), ``eval``
(accuracy, pass@k, maj@k), ``compare`` (objectives x seeds and their report), ``envs`` (list environments and their tools), ``replay``
(interactive token-level view of trajectories, HTML export) and ``plot`` (training figures). Bad flags, unknown
config keys, missing files and models that cannot be loaded end with a one-line message on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config_loading import ConfigError
from .errors import UsageError
from .interruption import TrainingInterrupted
from .run_directory import RunDirectoryError
from .teacher_errors import TeacherError
from .replay.commands import add_replay_commands, run_plot_command, run_replay_command

EXIT_USAGE = 2
EXIT_TEACHER = 3
"""Exit code of a run stopped because the teacher failed mid-run (resumable with --resume)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reopold-agent",
        description="Relaxed On-Policy Distillation (REOPOLD) of tool-using agents.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="distill a teacher into a student on a tool task")
    _add_run_flags(train)
    train.add_argument("--objective", choices=["reopold", "rkl", "rkl_sg", "grpo", "sft"],
                       help="loss to optimise (default from the preset: reopold)")
    train.add_argument("--steps", type=int, help="training steps")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest loadable checkpoint in --output-dir (an empty or new "
                            "directory starts a new run)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --output-dir (its checkpoints, metrics, trajectories)")

    sft = sub.add_parser("sft", help="supervised cold start of a student on gold trajectories")
    _add_run_flags(sft)
    sft.add_argument("--steps", type=_positive_int, default=500, help="supervised steps (default 500)")
    sft.add_argument("--data", help="JSONL trajectories to imitate (default: the task's gold trajectories)")

    ev = sub.add_parser("eval", help="evaluate a student: accuracy, pass@k, maj@k, tokens/s")
    _add_run_flags(ev)
    ev.add_argument("--num-problems", type=int, help="held-out problems (default from the preset)")
    ev.add_argument("--samples", type=int, help="sampled attempts per problem (k)")
    ev.add_argument("--with-teacher", action="store_true",
                    help="evaluate the teacher too, on the same problems and settings")

    compare = sub.add_parser("compare", help="train objectives x seeds at equal rollouts and tabulate them")
    _add_compare_flags(compare)

    envs = sub.add_parser("envs", help="list available environments and their tools")
    envs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_replay_commands(sub)
    return parser


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="tool_math", help="task preset from configs/ (default tool_math)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--env", metavar="ID", help="gymnasium id of the environment, e.g. my_pkg.envs:MyEnv-v0")
    p.add_argument("--prompts", metavar="FILE",
                   help="JSON Lines prompts (or hf:NAME[:SPLIT]) played in reopold_agent/PromptDataset-v0 "
                        "(task.prompts; tools and verifier in task.env_kwargs)")
    p.add_argument("--student", metavar="PATH_OR_ID", help="student model (default: the task's embedded tiny model)")
    p.add_argument("--teacher", metavar="PATH_OR_ID", help="teacher model (default: the task's embedded tiny model)")
    p.add_argument("--output-dir", metavar="DIR", help="run directory (default runs/<task>)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of data order and sampling (train.seed)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", dest="dtype", action="store_const", const="bfloat16",
                           help="models in bfloat16 (model.dtype=bfloat16; training in bf16 autocast)")
    precision.add_argument("--fp32", dest="dtype", action="store_const", const="float32",
                           help="models in float32 (model.dtype=float32)")
    p.add_argument("--device", metavar="DEVICE",
                   help="cpu, cuda or cuda:N (model.device; default auto: the GPU when one is visible)")


def _positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_compare_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="tool_math", help="task preset from configs/ (default tool_math)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file merged over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one value in every run (repeatable)")
    p.add_argument("--env", metavar="ID", help="gymnasium id of the environment")
    p.add_argument("--student", metavar="PATH_OR_ID", help="student model (default: the task's embedded tiny model)")
    p.add_argument("--teacher", metavar="PATH_OR_ID", help="teacher model (default: the task's embedded tiny model)")
    p.add_argument("--steps", type=int, help="training steps of every run")
    p.add_argument("--objectives", default="reopold,rkl_sg,rkl,grpo,sft",
                   help="comma-separated objectives (default reopold,rkl_sg,rkl,grpo,sft)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--reference", default="rkl", help="objective the sample-efficiency ratio is against (default rkl)")
    p.add_argument("--target", type=float, metavar="ACCURACY",
                   help="greedy accuracy in [0, 1] to count rollouts to (default: the reference's final accuracy)")
    p.add_argument("--output-dir", metavar="DIR", help="where the runs and the report go (default runs/compare_<task>)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("replay", "plot"):
            return run_replay_command(args) if args.command == "replay" else run_plot_command(args)
        if args.command == "compare":
            return compare_command(args)
        if args.command == "envs":
            from .commands import list_envs_command

            return list_envs_command(json_output=args.json)
        config = resolve_config(args)  # flags, configuration and paths first: no torch imported yet
        from .preflight import check_inputs

        check_inputs(config, command=args.command, data=getattr(args, "data", None),
                     teacher=getattr(args, "with_teacher", False))
        from .commands import quiet_transformers, train_command
        from .sft_command import sft_command
        from .eval_command import eval_command

        quiet_transformers()
        if args.command == "train":
            return _train(args, config, train_command)
        if args.command == "sft":
            return sft_command(config, steps=args.steps, data=args.data, cache_dir=default_cache_dir())
        return eval_command(config, cache_dir=default_cache_dir(),
                            output_dir=Path(args.output_dir) if args.output_dir is not None else None,
                            with_teacher=args.with_teacher)
    except (ConfigError, UsageError, RunDirectoryError) as exc:
        print(f"reopold-agent {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as exc:  # the trainer said what it saved
        return exc.exit_code
    except TeacherError as exc:  # the teacher failed mid-run; the trainer said what is safe
        print(f"reopold-agent {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_TEACHER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace, config, train_command) -> int:
    """Check and lock the run directory (main process only: under ``torchrun`` the others have a
    ``RANK`` above 0 and write through it), train, release the lock."""
    from .run_directory import open_run_directory

    lock = None
    if os.environ.get("RANK", "0") == "0":
        lock = open_run_directory(config.output_dir, resume=args.resume, overwrite=args.overwrite)
    try:
        return train_command(config, resume=args.resume, cache_dir=default_cache_dir())
    finally:
        _end_process_group()
        if lock is not None:
            lock.release()


def _end_process_group() -> None:
    """Destroy the launcher's process group (``torchrun`` / ``accelerate launch`` set
    ``WORLD_SIZE``), once the models that held it (a sharded student or teacher keeps it through
    its device mesh) are collected: gloo's worker threads left to the interpreter's shutdown can
    abort the process. A single process's group, which vLLM starts for itself, is vLLM's to end."""
    import gc

    dist = sys.modules.get("torch.distributed")  # never imported: no group to end
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist is not None and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def compare_command(args: argparse.Namespace) -> int:
    """Train every (objective, seed) not yet done, one at a time, then write the report."""
    from .compare import plan_runs, run_compare

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.target is not None and not 0.0 <= args.target <= 1.0:
        raise UsageError(f"--target is an accuracy in [0, 1], got {args.target}")
    preset_path(args.task)
    output = Path(args.output_dir or f"runs/compare_{args.task}")
    try:
        runs = plan_runs([o.strip() for o in args.objectives.split(",") if o.strip()], seeds, output)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    base = ["--task", args.task]
    for flag, value in (("--env", args.env), ("--student", args.student), ("--teacher", args.teacher),
                        ("--steps", args.steps)):
        if value is not None:
            base += [flag, str(value)]
    for path in args.config:
        base += ["--config", path]
    for text in args.overrides:
        base += ["--set", text]
    try:
        paths = run_compare(runs, base, output_dir=output, reference=args.reference, target=args.target)
    except RuntimeError as exc:
        print(f"reopold-agent compare: {exc}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def resolve_config(args: argparse.Namespace):
    """Preset for ``--task``, then ``--config`` files, then dedicated flags, then ``--set``."""
    from .config_loading import deep_merge, from_dict, load_yaml, parse_override, set_nested
    from .train_config import TrainConfig

    data = load_yaml(preset_path(args.task))
    configs = [load_yaml(path) for path in args.config]
    if _names_own_environment(args, configs):
        data.get("task", {}).pop("env_kwargs", None)  # the preset's kwargs are for its own environment
    for config in configs:
        data = deep_merge(data, config)
    flags = {
        "task.env_id": args.env, "task.prompts": getattr(args, "prompts", None),
        "model.student": args.student, "model.teacher": args.teacher,
        "output_dir": args.output_dir, "objective.name": getattr(args, "objective", None),
        "train.steps": getattr(args, "steps", None) if args.command == "train" else None,
        "eval.num_problems": getattr(args, "num_problems", None),
        "eval.samples": getattr(args, "samples", None),
        "train.seed": getattr(args, "seed", None), "model.dtype": getattr(args, "dtype", None),
        "model.device": getattr(args, "device", None),
    }
    for key, value in flags.items():
        if value is not None:
            set_nested(data, key.split("."), value)
    for text in args.overrides:
        keys, value = parse_override(text)
        set_nested(data, keys, value)
    data.setdefault("task", {}).setdefault("name", args.task)
    data.setdefault("output_dir", f"runs/{args.task}")
    return from_dict(TrainConfig, data)


def _names_own_environment(args: argparse.Namespace, configs: list[dict]) -> bool:
    """Whether the flags, ``--config`` files or ``--set`` name another environment than the
    preset's (``task.env_id`` or ``task.prompts``)."""
    if args.env is not None or getattr(args, "prompts", None) is not None:
        return True
    keys = ("env_id", "prompts")
    if any(isinstance(c.get("task"), dict) and any(k in c["task"] for k in keys) for c in configs):
        return True
    return any(text.split("=", 1)[0].strip() in ("task.env_id", "task.prompts") for text in args.overrides)


def preset_path(task: str) -> Path:
    """``configs/<task>.yaml`` shipped with the package."""
    from importlib import resources

    root = resources.files("reopold_agent.configs")
    path = root / f"{task}.yaml"
    if not path.is_file():
        known = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
        raise UsageError(f"no preset for task {task!r} (known presets: {', '.join(known)}); "
                         "use --config FILE for your own")
    return Path(str(path))


def default_cache_dir() -> Path:
    """Where embedded tiny models are built once: $REOPOLD_AGENT_CACHE or ~/.cache/reopold_agent."""
    root = os.environ.get("REOPOLD_AGENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reopold_agent")
    return Path(root)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
