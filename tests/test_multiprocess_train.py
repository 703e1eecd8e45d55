"""``reopold-agent train`` in two CPU processes through ``accelerate launch`` (DDP over gloo):
end to end, evaluation shared between the processes, a killed run resumed to the same metrics."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reopold_agent.run_logging import read_metrics
from reopold_agent.trajectory_io import read_trajectories
from tests.test_train_e2e import _args, _comparable, tiny_models  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _launch(models, out: Path, extra=()) -> list[str]:
    """``accelerate launch --multi_gpu --num_processes 2``: on a machine without a GPU it starts
    two CPU processes on gloo (``--cpu`` would start one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _args(models, out, steps=2, extra=(
        "--set", "train.save_every=1", "--set", "train.mini_batches=2", "--set", "eval.teacher=false",
        "--set", "objective.switch_fraction=null", "--set", "objective.reopold.switch_step=1", *extra))
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            str(BIN / "reopold-agent"), *args]


def _timeless(record):
    return {k: v for k, v in _comparable(record).items() if "seconds" not in k}


def _assert_same_metrics(run_a: Path, run_b: Path) -> None:
    """The two runs logged the same rows with the same values (wall-clock times aside)."""
    a = {(r["step"], tuple(sorted(r))): _timeless(r) for r in read_metrics(run_a)}
    b = {(r["step"], tuple(sorted(r))): _timeless(r) for r in read_metrics(run_b)}
    assert a.keys() == b.keys()
    assert len(read_metrics(run_b)) == len(read_metrics(run_a))  # no row twice
    for key in a:
        for name, value in a[key].items():
            other = b[key][name]
            assert (value is None and other is None) or other == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)


def _descendants(pid: int) -> list[int]:
    """Process ids of ``pid``'s children, grandchildren, ... (Linux ``/proc``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _kill_launch(pid: int) -> None:
    """SIGKILL the launcher and its training processes, as a crash of the machine would. torchrun
    starts each training process in a session of its own, so killing the launcher's process group
    alone would leave them running the rest of the run."""
    workers = _descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker, signal.SIGKILL)


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_train_share_the_evaluation_and_resume_a_killed_run(tiny_models, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    done = subprocess.run(_launch(tiny_models, straight), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    trajs, errors = read_trajectories(straight / "trajectories" / "step_000001.jsonl")
    assert not errors and len(trajs) == 4  # 2 prompts x 2 rollouts, one prompt per process
    # 3 eval problems, one greedy and one sampled episode each: process 0 plays problems 0 and 2,
    # process 1 problem 1, and the main process logs both shares in rank order
    evals, _ = read_trajectories(straight / "trajectories" / "eval_000002.jsonl")
    assert [t.prompt_id.rsplit("/", 1)[1] for t in evals] == ["0", "2", "0", "2", "1", "1"]
    final = [m for m in read_metrics(straight) if m["step"] == 2 and "eval/num_problems" in m][0]
    assert final["eval/num_problems"] == 3.0

    proc = subprocess.Popen(_launch(tiny_models, broken), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    latest = broken / "checkpoints" / "LATEST"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() == "step_000001"):
        time.sleep(0.05)
    _kill_launch(proc.pid)
    proc.wait()
    assert latest.read_text().strip() == "step_000001"
    done = subprocess.run(_launch(tiny_models, broken, extra=("--resume",)), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 1" in done.stdout + done.stderr  # the kill stopped the training processes too
    _assert_same_metrics(straight, broken)
    # resuming the finished run: its final evaluation is in the log, so no process plays it again
    # (only the main process reads the log; if the others did not learn that, they would wait in
    # the evaluation's collectives for a main process that has left)
    done = subprocess.run(_launch(tiny_models, broken, extra=("--resume",)), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 2" in done.stdout + done.stderr
    _assert_same_metrics(straight, broken)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(broken / "checkpoints" / "step_000002")
    assert model.num_parameters() > 0
