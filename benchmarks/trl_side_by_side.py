"""reopold-agent's training step against TRL's ``DistillationTrainer`` on the same models and prompts.

Both sides train the embedded tool_math student against the embedded teacher (built or taken
from the cache as ``reopold-agent train --task tool_math`` does) on the same train problems in
index order, ``--prompts`` prompts x ``--group`` rollouts per step, one optimiser step per
step, learning rate 1e-4, temperature 1 and top-p 0.9, on ``--threads`` torch threads. Each
run is a fresh process; the sides alternate run by run, and the script prints per side the
median seconds per step (the steps after each run's first), the generated tokens per step and
the seconds per 1,000 generated tokens, and the ratio of the medians.

What each side does in a step:

- reopold-agent: the tool_math episodes (a python call run in the sandbox, its result, the
  answer; ``rollout.max_turn_tokens`` per turn), teacher scoring, REOPOLD's update, with each
  prompt encoded once (``model.shared_prefix``).
- TRL: one completion per row (``--group`` copies of each prompt; TRL 1.16 has no group
  option) of at most ``--completion-tokens`` tokens from the same rendered prompt (system
  prompt, tool description, question), ending at the first ``<|im_end|>``: the tool call,
  without running it (the tiny tokenizer's chat template is not one TRL can parse tool calls
  from). Then the teacher's and student's full-vocabulary reverse KL (``beta=1``) and the update.

So TRL's step does less (one turn, no tool); the per-1k-token figure compares the work per
generated token. TRL is not a dependency of the project: install it in a separate environment
with the project (``pip install -e . trl``) and run the script there::

    python benchmarks/trl_side_by_side.py --steps 10 --runs 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LR = 1e-4
TOP_P = 0.9


def embedded_paths() -> tuple[str, str]:
    """(student, teacher) folders of the embedded tool_math models, built if missing."""
    from reopold_agent.cli import default_cache_dir
    from reopold_agent.demo.embedded import ensure_embedded_models

    built = ensure_embedded_models("tool_math", default_cache_dir())
    return str(built.student), str(built.teacher)


def rendered_prompts(tokenizer, count: int) -> list[str]:
    """The first ``count`` train problems' prompts as the rollout engine renders them."""
    from reopold_agent.envs.registry import make_env

    env = make_env("reopold_agent/ToolMath-v0", split="train")
    out = []
    for index in range(count):
        messages, info = env.reset(options={"index": index})
        out.append(tokenizer.apply_chat_template(messages, tools=info["tools"], add_generation_prompt=True,
                                                 tokenize=False))
    return out


def run_ours(args) -> dict:
    from reopold_agent.cli import main as cli_main
    from reopold_agent.run_logging import read_metrics
    from reopold_agent.trajectory_io import read_trajectories

    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--task", "tool_math", "--steps", str(args.steps), "--output-dir", out]
        for item in (f"train.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
                     "train.mini_batches=1", f"train.micro_batch_rows={args.prompts * args.group}",
                     "train.shuffle=false", f"train.lr={LR}", "train.warmup_steps=0", f"rollout.top_p={TOP_P}",
                     f"train.torch_threads={args.threads}", f"rollout.torch_threads={args.threads}",
                     "eval.num_problems=0", f"train.save_every={args.steps + 1}"):
            argv += ["--set", item]
        if cli_main(argv) != 0:
            raise SystemExit("reopold-agent training failed")
        seconds = [r["time/step_s"] for r in read_metrics(out) if "time/step_s" in r][1:]
        generated = []
        for path in sorted((Path(out) / "trajectories").glob("step_*.jsonl")):
            trajectories, _ = read_trajectories(path)
            generated.append(sum(sum(t.loss_mask) for t in trajectories))
    return {"seconds": seconds, "generated": generated[1:]}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    torch.set_num_threads(args.threads)
    student, teacher = embedded_paths()
    tokenizer = AutoTokenizer.from_pretrained(student)
    prompts = rendered_prompts(tokenizer, args.prompts * args.steps)
    rows = [{"prompt": p} for p in prompts for _ in range(args.group)]
    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            seconds.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.prompts * args.group,
            gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
            max_completion_length=args.completion_tokens, temperature=1.0, top_p=TOP_P, beta=1.0,
            gradient_checkpointing=False, disable_dropout=True, shuffle_dataset=False, use_cpu=True,
            report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0,
        )
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                      callbacks=[StepTimer()])
        trainer.train()
        lengths = [log["completions/mean_length"] for log in trainer.state.log_history
                   if "completions/mean_length" in log]
    return {"seconds": seconds[1:], "generated": [m * args.prompts * args.group for m in lengths][1:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="steps per run (the first is not counted)")
    p.add_argument("--runs", type=int, default=4, help="runs per side, alternated")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--completion-tokens", type=int, default=96, help="TRL's max_completion_length")
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print("RESULT " + json.dumps((run_ours if args.side == "ours" else run_trl)(args)))
        return
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("TRL is not installed in this environment; install it beside the project "
                         "(pip install -e . trl) and run the script there")
    embedded_paths()  # build once before timing anything
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for r in range(args.runs):
        for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
            cmd = [sys.executable, __file__, "--side", side] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("side", "runs")]
            done = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                raise SystemExit(f"{side} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            results[side].append(json.loads(lines[-1][len("RESULT "):]))
            print(f"run {r} {side}: median step {statistics.median(results[side][-1]['seconds']):.3f} s", flush=True)
    summary = {}
    for side, runs in results.items():
        seconds = [s for run in runs for s in run["seconds"]]
        generated = [g for run in runs for g in run["generated"]]
        step, tokens = statistics.median(seconds), statistics.median(generated)
        summary[side] = (step, tokens, 1000 * step / tokens)
    print(f"{'':16s} {'s/step':>8s} {'gen tokens/step':>16s} {'s/1k gen tokens':>16s}")
    for side, (step, tokens, per_k) in summary.items():
        print(f"{side:16s} {step:8.3f} {tokens:16.0f} {per_k:16.3f}")
    (o_step, _, o_k), (t_step, _, t_k) = summary["ours"], summary["trl"]
    run_ratios = [statistics.median(t["seconds"]) / statistics.median(o["seconds"])
                  for o, t in zip(results["ours"], results["trl"])]
    print(f"TRL / reopold-agent: {t_step / o_step:.2f}x per step (runs {min(run_ratios):.2f}-{max(run_ratios):.2f}x), "
          f"{t_k / o_k:.2f}x per generated token")


if __name__ == "__main__":
    main()
