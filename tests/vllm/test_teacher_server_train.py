"""``reopold-agent train --set teacher.backend=server`` against a real ``vllm serve`` on 127.0.0.1:
two steps end to end (the same training as the in-process teacher), then the server killed
mid-run (a clear error, no half-applied step, an intact checkpoint) and the run resumed once the
server is back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

from reopold_agent.checkpoint import latest_checkpoint  # noqa: E402
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer  # noqa: E402
from reopold_agent.run_logging import read_metrics  # noqa: E402
from tests.vllm.models import HEAD_DIM_32, save_student  # noqa: E402
from tests.vllm.serve import VLLMServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
"""Loss and reward gap allowed between a served and an in-process float32 teacher (the teacher
log-probs agree to about 1e-6)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_server_models")
    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    save_student(tok, root / "student", HEAD_DIM_32, seed=0)
    save_student(tok, root / "teacher", HEAD_DIM_32, seed=1)
    return root


@pytest.fixture(scope="module")
def server(models):
    srv = VLLMServer(models / "teacher", models / "serve.log").start()
    yield srv
    srv.kill()


def _command(models, out, steps, *extra, url=None):
    argv = [sys.executable, "-m", "reopold_agent.cli", "train", "--task", "tool_math",
            "--student", str(models / "student"), "--teacher", str(models / "teacher"),
            "--steps", str(steps), "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=24", "--set", "rollout.max_episode_tokens=200",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.every=0",
            "--set", "eval.teacher=false", "--set", "train.torch_threads=1", "--set", "train.save_every=1",
            "--set", "train.lr=1e-3", *extra]
    if url is not None:
        argv += ["--set", "teacher.backend=server", "--set", f"teacher.server.url={url}",
                 "--set", "teacher.server.max_retries=2", "--set", "teacher.server.backoff_s=0.2",
                 "--set", "teacher.server.timeout_s=30"]
    return argv


def _run(argv):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _training(run):
    return {r["step"]: r for r in read_metrics(run) if "objective/loss" in r}


@pytest.mark.slow
def test_two_steps_with_a_served_teacher_train_like_the_in_process_teacher(models, server, tmp_path):
    served = _run(_command(models, tmp_path / "served", 2, url=server.url))
    assert served.returncode == 0, served.stderr[-3000:]
    local = _run(_command(models, tmp_path / "local", 2))
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = _training(tmp_path / "local"), _training(tmp_path / "served")
    assert a.keys() == b.keys() == {0, 1}
    for step in (0, 1):
        for name in ("objective/loss", "rollout/reward_mean", "rollout/model_tokens_mean"):
            assert b[step][name] == pytest.approx(a[step][name], abs=TOL), (step, name)
        assert b[step]["teacher/seconds"] > 0 and b[step]["teacher/tokens_per_s"] > 0
        assert b[step]["teacher/retries"] == 0.0
    resolved = (tmp_path / "served" / "config.yaml").read_text()
    assert "backend: server" in resolved and server.url in resolved


@pytest.mark.slow
def test_a_server_killed_mid_run_stops_clearly_and_the_run_resumes_after_a_restart(models, server, tmp_path):
    run, steps = tmp_path / "run", 8
    proc = subprocess.Popen(_command(models, run, steps, url=server.url), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any('"objective/loss"' in line for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.05)
    server.kill()  # SIGKILL: the API server and its engine, mid-run
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("reopold-agent train: error:")]
    assert len(ours) == 1 and "Traceback" not in err, err[-3000:]
    assert f"teacher server {server.url}" in ours[0] and "gave up after 2 retries" in ours[0], ours[0]
    done = sorted(_training(run))
    failed = len(done)
    assert 1 <= failed < steps and done == list(range(failed)), done
    assert f"step {failed} was not applied" in ours[0] and "continue with --resume" in ours[0], ours[0]
    assert not (run / "trajectories" / f"step_{failed:06d}.jsonl").exists()
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == f"step_{failed:06d}", ckpt
    assert (ckpt / "COMPLETE").read_text().strip() == str(failed)
    assert not list((run / "checkpoints").glob(".tmp_*")), "no half-written checkpoint"
    from safetensors.torch import load_file

    assert all(load_file(str(p)) for p in ckpt.glob("*.safetensors")), "the checkpoint loads"

    server.start()  # the server is back, on the same address
    resumed = _run(_command(models, run, steps, "--resume", url=server.url))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(_training(run)) == list(range(steps))
    assert latest_checkpoint(run).name == f"step_{steps:06d}"
