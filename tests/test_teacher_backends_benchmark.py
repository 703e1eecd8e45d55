"""benchmarks/teacher_backends.py stays runnable: the ``hf`` backend here (the vLLM backends are
run by tests/vllm/test_teacher_server_train.py)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_backends.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmarks_teacher_backends", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hf_backend_is_timed_on_every_round(capsys):
    results = _benchmark().main(["--backends", "hf", "--rounds", "3", "--episodes", "3", "--min-tokens", "10",
                                 "--max-tokens", "30", "--threads", "1"])
    assert list(results) == ["hf"] and len(results["hf"]["seconds"]) == 3
    assert all(s > 0 for s in results["hf"]["seconds"]) and results["hf"]["tokens_per_s"] > 0
    assert results["hf"]["max_gap_to_hf"] == 0.0
    assert "3 trajectories" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--backends", "tgi"], "--backends: expected a subset"),
                                           (["--min-tokens", "40", "--max-tokens", "30"], "--min-tokens")])
def test_bad_arguments_are_refused(argv, message):
    with pytest.raises(SystemExit, match=message):
        _benchmark().main(argv)
