"""Teachers served by a real ``vllm serve`` on 127.0.0.1 (started by the tests, stopped afterwards)
and run by vLLM's engine inside the trainer: the served teacher gives the HF scorer's log-probs
and refuses a student with another tokenizer; two training steps with ``teacher.backend=server``
and with ``teacher.backend=vllm`` train like the in-process HF teacher; the server killed mid-run
gives a clear error, no half-applied step and an intact checkpoint, and the run resumes once the
server is back."""

from __future__ import annotations

import importlib.util
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
from reopold_agent.teacher import TeacherScorer  # noqa: E402
from reopold_agent.teacher_config import TeacherServerConfig  # noqa: E402
from reopold_agent.teacher_scoring import TeacherIdMismatch  # noqa: E402
from reopold_agent.teacher_server import ServerTeacher  # noqa: E402
from tests import tiny  # noqa: E402
from tests.vllm.models import HEAD_DIM_32, save_student  # noqa: E402
from tests.vllm.serve import VLLMServer  # noqa: E402
from tests.vllm.trajectories import largest_gap, random_trajectories, unscored  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 256
"""The served teacher's --max-model-len (episodes of the runs here are at most 200 tokens)."""
LOGP_TOL = 2e-5
"""|log-prob difference| allowed between the served teacher and transformers in float32
(measured: about 1e-6)."""
TOL = 1e-4
"""Loss and reward gap allowed between a vLLM (served or in-process) and an HF float32 teacher."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folder holding ``student`` and ``teacher`` (one tokenizer); the teacher model itself."""
    root = tmp_path_factory.mktemp("teacher_server_models")
    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    save_student(tok, root / "student", HEAD_DIM_32, seed=0)
    teacher = save_student(tok, root / "teacher", HEAD_DIM_32, seed=1)
    return root, teacher, tok


@pytest.fixture(scope="module")
def server(models):
    srv = VLLMServer(models[0] / "teacher", models[0] / "serve.log", max_model_len=MAX_LEN).start()
    yield srv
    srv.kill()


def _command(root, out, steps, *extra, url=None):
    argv = [sys.executable, "-m", "reopold_agent.cli", "train", "--task", "tool_math",
            "--student", str(root / "student"), "--teacher", str(root / "teacher"),
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
def test_a_vllm_server_gives_the_hf_scorers_logprobs_and_refuses_another_tokenizer(models, server):
    _, teacher, tok = models
    reference = random_trajectories(len(tok))
    TeacherScorer(teacher, pad_token_id=tok.pad_token_id, batch_rows=4).score(reference)
    client = ServerTeacher(TeacherServerConfig(url=server.url + "/v1", max_concurrency=4))
    client.check(tok, max_tokens=MAX_LEN - 1)
    assert client.model == "teacher"
    trajs = unscored(reference)
    call = client.score(trajs)
    client.close()
    assert largest_gap(trajs, reference) < LOGP_TOL
    assert call.retries == 0 and call.tokens == sum(t.num_tokens for t in trajs)
    # the same server as seen by a student with another tokenizer
    stranger = ServerTeacher(TeacherServerConfig(url=server.url))
    with pytest.raises(TeacherIdMismatch, match=r"tokenizes a probe text to other ids than the student's: first "
                                                r"difference at position \d+ \(student id \d+, teacher \d+"):
        stranger.check(tiny.tokenizer(), max_tokens=MAX_LEN - 1)
    stranger.close()


@pytest.mark.slow
def test_the_teacher_backend_benchmark_scores_the_same_trajectories_with_all_three(models, server, capsys):
    spec = importlib.util.spec_from_file_location("benchmarks_teacher_backends",
                                                  REPO / "benchmarks" / "teacher_backends.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--teacher", str(models[0] / "teacher"), "--server-url", server.url, "--rounds", "2",
                          "--episodes", "4", "--min-tokens", "40", "--max-tokens", "120", "--threads", "1"])
    assert list(results) == ["hf", "vllm", "server"]
    for name, result in results.items():
        assert len(result["seconds"]) == 2 and result["tokens_per_s"] > 0, name
        assert result["max_gap_to_hf"] < LOGP_TOL, name
    assert "4 trajectories" in capsys.readouterr().out


@pytest.mark.slow
def test_two_steps_with_a_served_or_in_process_vllm_teacher_train_like_the_hf_teacher(models, server, tmp_path):
    root = models[0]
    runs = {"hf": _command(root, tmp_path / "hf", 2), "server": _command(root, tmp_path / "server", 2, url=server.url),
            "vllm": _command(root, tmp_path / "vllm", 2, "--set", "teacher.backend=vllm")}
    for name, argv in runs.items():
        done = _run(argv)
        assert done.returncode == 0, (name, done.stderr[-3000:])
    hf = _training(tmp_path / "hf")
    assert hf.keys() == {0, 1}
    for name in ("server", "vllm"):
        other = _training(tmp_path / name)
        assert other.keys() == {0, 1}, name
        for step in (0, 1):
            for key in ("objective/loss", "rollout/reward_mean", "rollout/model_tokens_mean"):
                assert other[step][key] == pytest.approx(hf[step][key], abs=TOL), (name, step, key)
            assert other[step]["time/teacher_s"] > 0 and other[step]["throughput/teacher_tokens_per_s"] > 0
            assert other[step]["teacher/retries"] == 0.0
        resolved = (tmp_path / name / "config.yaml").read_text()
        assert f"backend: {name}" in resolved
    assert server.url in (tmp_path / "server" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_server_killed_mid_run_stops_clearly_and_the_run_resumes_after_a_restart(models, server, tmp_path):
    root, run, steps = models[0], tmp_path / "run", 5
    proc = subprocess.Popen(_command(root, run, steps, url=server.url), cwd=REPO, stdout=subprocess.DEVNULL,
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
    resumed = _run(_command(root, run, steps, "--resume", url=server.url))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(_training(run)) == list(range(steps))
    assert latest_checkpoint(run).name == f"step_{steps:06d}"
