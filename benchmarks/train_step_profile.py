"""Per-step time split, tokens per second and peak memory of a training preset (CPU or GPU).

Runs ``reopold-agent train`` in-process for a few steps without evaluation, then prints medians
and means over the steps (the first step is reported apart: it includes warm-up; a mean
above the median means some steps stalled):

    python benchmarks/train_step_profile.py --task tool_math --steps 8 [--set key=value ...]

Rollout time is split into model generation, environment steps (tool calls, run
concurrently: the time spent submitting them and waiting for them while no generation runs)
and templating/bookkeeping; "outside the models" = environments + templating; "all but the
model" also counts what neither covers (building the trajectories at the end, the loop itself).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile

from reopold_agent.cli import main as cli_main
from reopold_agent.run_logging import read_metrics

KEYS = ("time/rollout_generate_s", "time/rollout_env_s", "time/rollout_template_s", "time/rollout_s",
        "time/teacher_s", "time/update_s", "time/step_s", "throughput/model_tokens_per_s",
        "rollout/model_tokens_mean", "rollout/episodes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tool_math")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--task", args.task, "--steps", str(args.steps), "--output-dir", out,
                "--set", "eval.num_problems=0", "--set", f"train.save_every={args.steps + 1}"]
        for item in args.overrides:
            argv += ["--set", item]
        if cli_main(argv) != 0:
            raise SystemExit("training failed")
        rows = [r for r in read_metrics(out) if "time/step_s" in r]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first, rest = rows[0], rows[1:] or rows
    print(f"{'metric':34s} {'median':>10s} {'mean':>10s} {'first step':>11s}")
    for key in KEYS:
        values = [r[key] for r in rest if key in r]
        if values:
            print(f"{key:34s} {statistics.median(values):10.3f} {statistics.mean(values):10.3f} "
                  f"{first.get(key, float('nan')):11.3f}")
    for label, keys in (("environments / rollout", ("time/rollout_env_s",)),
                        ("templating / rollout", ("time/rollout_template_s",)),
                        ("outside the models / rollout", ("time/rollout_env_s", "time/rollout_template_s"))):
        share = [sum(r[k] for k in keys) / r["time/rollout_s"] for r in rest]
        print(f"{label:34s} {statistics.median(share):10.1%}")
    not_model = [1 - r["time/rollout_generate_s"] / r["time/rollout_s"] for r in rest]
    print(f"{'all but the model / rollout':34s} {statistics.median(not_model):10.1%}")
    print(f"peak resident memory {peak_mb:,.0f} MiB over {len(rows)} steps")


if __name__ == "__main__":
    main()
