"""FSDP2 through accelerate in two CPU processes (gloo): the same update as one process, a
checkpoint of full weights that resumes exactly and loads with ``from_pretrained``, and a
sampler copy kept equal to the shards. The processes run tests/fsdp_cases.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agent.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reopold_agent.run_logging import read_metrics
from reopold_agent.sharded_state import check_full_optimizer_state
from tests import tiny
from tests.test_train_e2e import _args, _comparable, tiny_models  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
"""fp32: the shards' reduce-scatter sums in another order than one process's backward."""


def _launch(processes: int, script: str, *args: str, succeed: bool = True) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port),
         str(REPO / "tests" / script), *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    if succeed:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run(out: Path, processes: int) -> list[dict]:
    out.mkdir()
    _launch(processes, "fsdp_cases.py", str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


def _assert_close(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(expected) == sorted(got), what
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **TOLERANCE, msg=lambda m: f"{what} {name}: {m}")


@pytest.mark.slow
def test_fsdp_in_two_processes_updates_saves_and_resumes_like_one_process(tmp_path):
    (reference,) = _run(tmp_path / "one", 1)
    sharded = _run(tmp_path / "two", 2)
    assert not reference["sharded"]
    for rank in sharded:
        assert rank["sharded"]  # the engine did shard the student
        _assert_close(reference["grads"], rank["grads"], "gradient")
        _assert_close(reference["weights"], rank["weights"], "weights after the update")
        # the sampler's full copy follows the shards exactly
        _assert_close(rank["weights"], rank["sampler_weights"], "sampler copy")
        # a student of other weights resumed from the checkpoint holds the saved weights, and its
        # next update (momentum restored) equals the uninterrupted one
        torch.testing.assert_close(rank["resumed_weights"], rank["weights"], rtol=0, atol=0)
        torch.testing.assert_close(rank["resumed_after_second"], rank["continued_after_second"], rtol=0, atol=0)
        _assert_close(reference["continued_after_second"], rank["continued_after_second"], "weights after two updates")

    from transformers import AutoModelForCausalLM

    checkpoint = tmp_path / "two" / "run" / "checkpoints" / "step_000001"
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    torch.testing.assert_close({k: loaded[k] for k in sharded[0]["weights"]}, sharded[0]["weights"], rtol=0, atol=0)
    assert torch.load(checkpoint / "optimizer.pt", weights_only=False)["layout"] == "full_by_name"


@pytest.mark.slow
def test_fsdp_train_command_samples_saves_and_resumes_to_the_same_metrics(tiny_models, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = _args(tiny_models, straight, steps=2, extra=(
        "--set", "train.save_every=1", "--set", "train.mini_batches=2", "--set", "eval.teacher=false",
        "--set", "objective.switch_fraction=null", "--set", "objective.reopold.switch_step=1",
        "--set", "model.gradient_checkpointing=true"))
    _launch(2, "fsdp_train.py", *args)
    # a run that stopped after its first checkpoint
    shutil.copytree(straight, broken)
    shutil.rmtree(broken / "checkpoints" / "step_000002")
    (broken / "checkpoints" / "LATEST").write_text("step_000001")
    resumed = _launch(2, "fsdp_train.py", *[str(broken) if a == str(straight) else a for a in args], "--resume")
    assert "resumed from step 1" in resumed.stdout + resumed.stderr
    rows = {(r["step"], tuple(sorted(r))): _comparable(r) for r in read_metrics(straight)}
    again = {(r["step"], tuple(sorted(r))): _comparable(r) for r in read_metrics(broken)}
    assert rows.keys() == again.keys() and len(read_metrics(broken)) == len(read_metrics(straight))
    for key, row in rows.items():
        for name, value in row.items():
            other = again[key][name]
            assert (value is None and other is None) or other == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)
    saved = torch.load(straight / "checkpoints" / "step_000002" / "optimizer.pt", weights_only=False)
    assert saved["layout"] == "full_by_name"  # the run's student was sharded
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(broken / "checkpoints" / "step_000002").state_dict()
    before = AutoModelForCausalLM.from_pretrained(tiny_models[0]).state_dict()
    assert [k for k in before if torch.equal(final[k], before[k])] == []  # every tensor trained


@pytest.mark.slow
def test_fsdp_refuses_8bit_adamw_in_one_line(tiny_models, tmp_path):
    args = _args(tiny_models, tmp_path / "run", extra=("--set", "train.optimizer=adamw_8bit",
                                                       "--set", "train.mini_batches=2"))
    done = _launch(2, "fsdp_train.py", *args, succeed=False)
    assert done.returncode != 0
    assert "train.optimizer=adamw_8bit with FSDP is not implemented" in done.stderr


@pytest.mark.slow
def test_the_gpu_fsdp_benchmark_runs_in_two_cpu_processes():
    import json

    done = _launch(2, "../benchmarks/gpu_fsdp_update.py", "--strategy", "fsdp", "--shape", "tiny-student",
                   "--device", "cpu", "--rows", "2", "--tokens", "32", "--steps", "1")
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert report["processes"] == 2 and report["strategy"] == "fsdp"
    assert report["seconds_per_update"] > 0 and report["full_weight_gather_s"] > 0


def test_a_sharded_runs_checkpoint_is_refused_by_an_unsharded_student(tmp_path):
    model = tiny.model("nano", seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    full_by_name = {"state": {}, "param_groups": [{"params": [n for n, _ in model.named_parameters()], "lr": 0.1}]}
    path = save_checkpoint(tmp_path, 1, model=model, tokenizer=None, optimizer=optimizer, scheduler=scheduler,
                           extra={}, optimizer_state=full_by_name)
    with pytest.raises(CheckpointError, match="saved by a sharded run, resumed by an unsharded one"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)


def test_a_full_optimizer_state_must_name_the_students_parameters_with_their_shapes():
    model = tiny.model("nano", seed=1)
    name, param = next(iter(model.named_parameters()))
    fitting = {"state": {name: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(param.shape)}}, "param_groups": []}
    assert check_full_optimizer_state(fitting, model) is None
    wrong_shape = {"state": {name: {"exp_avg": torch.zeros(3)}}, "param_groups": []}
    assert check_full_optimizer_state(wrong_shape, model) == f"exp_avg of {name} has shape (3,), the parameter {tuple(param.shape)}"
    stranger = {"state": {"no.such.weight": {}}, "param_groups": []}
    assert "no.such.weight" in check_full_optimizer_state(stranger, model)
    assert check_full_optimizer_state([], model) == "no optimizer state"
