"""Does on-policy distillation keep a student that is already good? (the embedded tool_math task)

Continues the embedded student's supervised training until it solves at least ``--target`` of the
build's probe problems greedily, then runs ``--steps`` steps of the ``tool_math`` preset from that
student and prints its held-out greedy and sampled accuracy before and after:

    python benchmarks/strong_student_stability.py [--steps 100] [--set key=value ...]

The verdict compares the drop in greedy accuracy with twice the standard error of a difference of
two accuracies on the evaluation set (about 5 points at 80% on 500 problems): a larger drop means
the objective made a good student worse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from reopold_agent.demo import embedded
from reopold_agent.cli import default_cache_dir
from reopold_agent.cli import main as cli_main
from reopold_agent.demo.measured_stop import AccuracyTarget, probe_accuracy, train_to_target
from reopold_agent.run_logging import read_metrics
from reopold_agent.sandbox import SandboxConfig, make_sandbox
from reopold_agent.supervised import SupervisedConfig, SupervisedRun, tokenize_conversation


def strong_student(out: Path, *, target: float, cache_dir: Path, log=print) -> dict:
    """Save into ``out`` the embedded student trained on until ``target`` probe accuracy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = embedded.RECIPES["tool_math"]
    sandbox = make_sandbox(SandboxConfig(), env=os.environ)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        built = embedded.ensure_embedded_models("tool_math", cache_dir, sandbox=sandbox, log=log)
        tokenizer = AutoTokenizer.from_pretrained(built.student)
        model = AutoModelForCausalLM.from_pretrained(built.student)
        conversations = embedded.gold_conversations("tool_math", count=recipe.num_conversations, seed=recipe.seed)
        examples = [tokenize_conversation(tokenizer, c) for c in conversations]
        run = SupervisedRun(model, examples, SupervisedConfig(steps=1000, batch_size=32, lr=1e-3, warmup_steps=1,
                                                              seed=5), pad_token_id=tokenizer.pad_token_id)
        measure = probe_accuracy("tool_math", recipe.probe, model, tokenizer, sandbox=sandbox, seed=recipe.seed)
        reached = train_to_target(run, AccuracyTarget(low=target, first_check=10, every=10, fine_every=10,
                                                      max_steps=1000),
                                  measure, log=log, role="strong student")
        model.save_pretrained(out / "student")
        tokenizer.save_pretrained(out / "student")
        return {"teacher": str(built.teacher), "student": str(out / "student"), **reached}
    finally:
        torch.set_num_threads(threads)
        sandbox.close()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--target", type=float, default=0.8, help="probe accuracy the student starts from")
    p.add_argument("--output-dir", help="keep the strong student and the run here (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp)
        models = strong_student(out, target=args.target, cache_dir=default_cache_dir())
        argv = ["train", "--task", "tool_math", "--student", models["student"], "--teacher", models["teacher"],
                "--steps", str(args.steps), "--output-dir", str(out / "run"), "--set", f"eval.every={args.steps}",
                "--set", "eval.teacher=false", "--set", f"train.save_every={args.steps}"]
        for item in args.overrides:
            argv += ["--set", item]
        if cli_main(argv) != 0:
            raise SystemExit("training failed")
        evals = [r for r in read_metrics(out / "run") if "eval/greedy_accuracy" in r]
    before, after = evals[0], evals[-1]
    n = before["eval/num_problems"]
    p0, p1 = before["eval/greedy_accuracy"], after["eval/greedy_accuracy"]
    band = 2 * math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n)
    result = {"probe_accuracy": models["accuracy"], "sft_steps": models["steps"], "steps": args.steps,
              "greedy_before": p0, "greedy_after": p1, "sampled_before": before["eval/sampled_accuracy"],
              "sampled_after": after["eval/sampled_accuracy"], "noise_band": band, "kept": p1 >= p0 - band}
    print(json.dumps(result, indent=2))
    print(f"greedy {100 * p0:.1f}% -> {100 * p1:.1f}% after {args.steps} steps "
          f"(noise band {100 * band:.1f} points): {'kept' if result['kept'] else 'MADE WORSE'}")
    return result


if __name__ == "__main__":
    main()
