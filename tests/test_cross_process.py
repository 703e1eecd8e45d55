"""Cross-process collectives and engine-synchronised gradients, with real gloo processes.

``tests/multiprocess_cases.py`` runs in each process of a ``torch.distributed.run`` launch; the
single-process run of the same script is the reference.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agent.cross_process import gather_values

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "multiprocess_cases.py"
TOLERANCE = {"atol": 1e-6, "rtol": 1e-5}
"""Gradients and weights of 2 processes against 1: float32 sums in another order."""


def _launch(out: Path, processes: int, *extra: str) -> list[dict]:
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--standalone", str(CASES), str(out), *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    return {"one": _launch(root / "one", 1), "two": _launch(root / "two", 2),
            "unwrapped": _launch(root / "unwrapped", 2, "--unwrapped")}


@pytest.mark.slow
def test_ragged_values_gather_in_rank_order_with_nan_and_infinity(runs):
    for result in runs["two"]:
        got = result["gathered"].tolist()
        assert len(got) == 4 and got[0] == 1.0 and math.isnan(got[1]) and got[2] == -math.inf and got[3] == 5.0


@pytest.mark.slow
def test_two_ddp_processes_give_the_single_process_gradients_and_weights(runs):
    """Same global batch, REOPOLD refinement (global threshold and normaliser), accumulation over
    two micro-batches per process: the engine-synchronised update equals one process's."""
    (one,), two = runs["one"], runs["two"]
    assert one["grads"] and set(one["grads"]) == set(two[0]["grads"])
    for rank in (0, 1):
        for name, grad in one["grads"].items():
            torch.testing.assert_close(two[rank]["grads"][name], grad, **TOLERANCE)
        for name, weight in one["weights"].items():
            torch.testing.assert_close(two[rank]["weights"][name], weight, **TOLERANCE)


@pytest.mark.slow
def test_without_the_engines_synchronisation_the_processes_disagree(runs):
    """The negative control of the test above: each process alone sees only its share, so the
    comparison detects a missing gradient synchronisation."""
    (one,), unwrapped = runs["one"], runs["unwrapped"]
    name = "model.embed_tokens.weight"
    assert not torch.allclose(unwrapped[0]["weights"][name], unwrapped[1]["weights"][name], **TOLERANCE)
    assert not torch.allclose(unwrapped[0]["grads"][name], one["grads"][name], **TOLERANCE)


class _Recorder:
    """An accelerator of two processes whose collectives only record what they were handed,
    then stop the gather (the check is on the device of the collective's inputs)."""

    num_processes = 2

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.handed: list[torch.device] = []

    def gather(self, tensor):
        self.handed.append(tensor.device)
        raise _Stop

    def pad_across_processes(self, tensor, **kwargs):
        self.handed.append(tensor.device)
        return tensor


class _Stop(Exception):
    pass


def test_the_collective_receives_tensors_on_the_accelerators_device():
    """NCCL takes device tensors only: a CPU tensor of values goes to the device first."""
    recorder = _Recorder("meta")
    with pytest.raises(_Stop):
        gather_values(torch.tensor([1.0, 2.0]), recorder)
    assert recorder.handed == [torch.device("meta")]


def test_a_single_process_returns_its_values_unchanged():
    class One:
        num_processes = 1
        device = torch.device("cpu")

    values = torch.tensor([1.0, float("nan")])
    assert gather_values(values, One()) is values
