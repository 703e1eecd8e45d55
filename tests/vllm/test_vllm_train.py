"""End to end with the real vLLM: ``reopold-agent train --set rollout.backend=vllm`` and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

from reopold_agent.demo.embedded import gold_conversations, task_tokenizer  # noqa: E402
from reopold_agent.run_logging import read_metrics  # noqa: E402
from reopold_agent.trajectory_io import read_trajectories  # noqa: E402
from tests.vllm.models import HEAD_DIM_16, HEAD_DIM_32, save_student  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
"""|vLLM - trainer| log-prob gap allowed in float32 (measured: below 1e-5)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_models")
    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    save_student(tok, root / "student", HEAD_DIM_32, seed=0)
    save_student(tok, root / "teacher", HEAD_DIM_32, seed=1)
    save_student(tok, root / "head16", HEAD_DIM_16, seed=0)
    return root


def _train(student, teacher, out, steps, *extra):
    argv = [sys.executable, "-m", "reopold_agent.cli", "train", "--task", "tool_math", "--student", str(student),
            "--teacher", str(teacher), "--steps", str(steps), "--output-dir", str(out),
            "--set", "rollout.backend=vllm", "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=24", "--set", "rollout.max_episode_tokens=200",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.every=0",
            "--set", "train.torch_threads=1", "--set", "train.save_every=1", "--set", "train.lr=1e-2",
            "--set", "objective.switch_fraction=0.34", "--set", "objective.tis_cap=2.0", *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}


@pytest.mark.slow
def test_three_vllm_steps_train_record_the_mismatch_and_resume_to_the_same_metrics(models, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    done = _train(models / "student", models / "teacher", straight, 3)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [m for m in read_metrics(straight) if "objective/loss" in m]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert 0 <= m["mismatch/logp_abs_diff_mean"] <= m["mismatch/logp_abs_diff_max"] < TOL
        assert m["mismatch/ratio_outside_frac"] == 0.0 and m["mismatch/tis_truncated_frac"] == 0.0
        assert m["mismatch/tis_weight_mean"] == pytest.approx(1.0, abs=TOL)
        assert m["time/recompute_s"] > 0
    assert metrics[-1]["objective/phase"] == 1.0, "step 2 refines: the recomputed entropies rank the tokens"
    for step in range(3):
        trajs, errors = read_trajectories(straight / "trajectories" / f"step_{step:06d}.jsonl")
        assert not errors and len(trajs) == 4
        for t in trajs:
            t.check_masks()
            assert t.sampler == "vllm"
            model = [i for i, s in enumerate(t.source) if s == "model"]
            assert model and all(t.logprobs[i] is not None and t.trainer_logprobs[i] is not None
                                 and t.entropy[i] is not None and t.entropy[i] > 0 for i in model)
            assert all(t.trainer_logprobs[i] is None and t.entropy[i] is None
                       for i in range(t.num_tokens) if i not in model)
            # vLLM sampled step k with the weights after update k-1: the trainer, recomputing with
            # those weights (lr 1e-2 moves them far), finds the sampler's own log-probs
            assert max(abs(t.logprobs[i] - t.trainer_logprobs[i]) for i in model) < TOL
    evals, errors = read_trajectories(straight / "trajectories" / "eval_000003.jsonl")
    assert not errors and evals and all(t.sampler == "vllm" for t in evals)

    first = _train(models / "student", models / "teacher", broken, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _train(models / "student", models / "teacher", broken, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = {m["step"]: _comparable(m) for m in read_metrics(straight) if "objective/loss" in m}
    b = {m["step"]: _comparable(m) for m in read_metrics(broken) if "objective/loss" in m}
    assert a.keys() == b.keys() == {0, 1, 2}
    for name, value in a[2].items():
        assert b[2][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_a_head_size_vllm_refuses_stops_the_run_in_one_line(models, tmp_path):
    done = _train(models / "head16", models / "teacher", tmp_path / "run", 1)
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if "vLLM cannot serve the student" in line]
    assert len(ours) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Unsupported CPU attention configuration" in ours[0] or "head" in ours[0].lower(), ours[0]


def test_the_backend_benchmark_runs_both_backends_on_the_same_prompts(models, tmp_path):
    argv = [sys.executable, "-c", "import sys, runpy; sys.argv = sys.argv[1:]; "
            "runpy.run_path('benchmarks/rollout_backends.py', run_name='__main__')",
            "rollout_backends.py", "--steps", "2", "--student", str(models / "student"),
            "--teacher", str(models / "teacher"), "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=16", "--set", "rollout.max_episode_tokens=200",
            "--set", "train.torch_threads=1"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name in ("step 0 hf", "step 0 vllm", "step 1 vllm", "step 1 hf", "generated tok/s", "time/recompute_s"):
        assert name in out, out
    row = next(line for line in out.splitlines() if line.startswith("generated tok/s")).split()
    assert float(row[2]) > 0 and float(row[3]) > 0, row
