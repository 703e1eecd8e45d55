"""The vLLM backend on the embedded default models (builds them once; ``-m demo``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

from reopold_agent.run_logging import read_metrics  # noqa: E402
from reopold_agent.trajectory_io import read_trajectories  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _train(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "reopold_agent.cli", "train", "--task", "tool_math", "--steps", str(steps),
            "--output-dir", str(out), "--set", "rollout.backend=vllm", "--set", "eval.num_problems=20",
            "--set", "eval.every=0", "--set", "eval.teacher=false", "--set", "train.save_every=1",
            "--set", "train.torch_threads=1", *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.demo
def test_three_steps_on_the_embedded_default_then_resume(tmp_path):
    out = tmp_path / "run"
    first = _train(out, 3)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _train(out, 4, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [m for m in read_metrics(out) if "objective/loss" in m]
    assert [m["step"] for m in steps] == [0, 1, 2, 3]
    for m in steps:
        assert m["mismatch/logp_abs_diff_max"] < 1e-3 and m["mismatch/ratio_outside_frac"] == 0.0
    trajs, errors = read_trajectories(out / "trajectories" / "step_000003.jsonl")
    assert not errors and len(trajs) == 64
    for t in trajs:
        assert t.sampler == "vllm"
        assert all(m == (s == "model") for m, s in zip(t.loss_mask, t.source))
        model = [i for i, s in enumerate(t.source) if s == "model"]
        assert all(t.trainer_logprobs[i] is not None and t.logprobs[i] is not None for i in model)
