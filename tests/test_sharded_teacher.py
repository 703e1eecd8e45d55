"""``teacher.placement: sharded``: a teacher sharded with FSDP2 over two CPU processes (gloo)
scores exactly as a whole copy while each process holds about half of it; the settings it
cannot serve are refused when the config is read or the run starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agent.cli import main
from reopold_agent.config_loading import ConfigError, from_dict
from reopold_agent.train_config import TrainConfig
from reopold_agent.run_logging import read_metrics
from tests.test_multiprocess_train import _env, _launch
from tests.test_train_e2e import _args, _comparable, tiny_models  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_sharded_teacher_scores_like_a_whole_one_holding_half_of_it(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(REPO / "tests" / "sharded_teacher_cases.py"), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert len(result["sharded"]) == len(result["whole"]) == 6
        for got, expected in zip(result["sharded"], result["whole"]):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        # half of everything but the head, which every process keeps whole
        assert result["held"] == (result["total"] - result["head"]) // 2 + result["head"]


@pytest.mark.slow
def test_two_process_training_with_a_sharded_teacher_logs_what_a_replicated_one_does(tiny_models, tmp_path):
    """accelerate launch (DDP student); the sharded teacher scores without the shared prefix, so
    the replicated run does too: the same log-probs, hence the same metrics."""
    runs = {}
    for placement in ("replicated", "sharded"):
        out = tmp_path / placement
        done = subprocess.run(_launch(tiny_models, out, extra=("--set", f"teacher.placement={placement}",
                                                                "--set", "model.shared_prefix=false")),
                              cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
        assert done.returncode == 0, done.stderr[-3000:]
        runs[placement] = [_comparable(r) for r in read_metrics(out)]
    assert len(runs["sharded"]) == len(runs["replicated"])
    for whole, sharded in zip(runs["replicated"], runs["sharded"]):
        assert whole.keys() == sharded.keys()
        for name, value in whole.items():
            expected = value if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)
            assert sharded[name] == expected, name


@pytest.mark.parametrize("settings, message", [
    ({"teacher": {"placement": "sharded", "backend": "vllm"}, "eval": {"teacher": False}},
     "teacher.placement must be replicated with teacher.backend=vllm"),
    ({"teacher": {"placement": "sharded"}, "eval": {"teacher": True}},
     "eval.teacher plays evaluation episodes with the teacher, which a sharded teacher cannot do"),
    ({"teacher": {"placement": "sharded"}, "objective": {"name": "sft"}},
     "objective sft plays the training episodes with the teacher, which a sharded teacher cannot do"),
    ({"teacher": {"placement": "everywhere"}}, "teacher.placement: expected one of 'replicated', 'sharded'"),
])
def test_settings_a_sharded_teacher_cannot_serve_are_refused(settings, message):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, settings)
    assert message in str(info.value)


def test_a_sharded_teacher_in_one_process_is_refused_before_training(tiny_models, tmp_path, capsys):
    argv = _args(tiny_models, tmp_path / "run", extra=("--set", "teacher.placement=sharded",
                                                       "--set", "eval.teacher=false"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "teacher.placement=sharded spreads the teacher over several training processes, and this run has one" in err
