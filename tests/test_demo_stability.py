"""The embedded default's promise that distillation keeps a good student (minutes; ``-m demo``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "strong_student_stability.py"


@pytest.mark.demo
def test_100_default_steps_from_a_student_at_80_percent_keep_its_accuracy(tmp_path):
    spec = importlib.util.spec_from_file_location("strong_student_stability", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--steps", "100", "--output-dir", str(tmp_path)])
    assert result["probe_accuracy"] >= 0.8
    assert result["greedy_before"] >= 0.7
    assert result["greedy_after"] >= result["greedy_before"] - result["noise_band"], result
