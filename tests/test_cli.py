"""The command line: errors before heavy imports, model and data paths, the usual flags, a user
environment from the working directory, and what ``eval`` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from reopold_agent.cli import build_parser, main, resolve_config
from reopold_agent.preflight import check_model_path, names_local_folder
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "reopold-agent"
"""The installed console script: its folder, not the working directory, starts ``sys.path``."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.save_tool_math_models(tmp_path_factory.mktemp("models"))


def _run_script(*argv: str, cwd: Path, importtime: bool = False, timeout: float = 300):
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT} (the package is not installed in this environment)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), str(SCRIPT), *argv]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def _imported_top_level(importtime_stderr: str) -> set[str]:
    """Top-level packages named in ``python -X importtime`` lines."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "--set", "train.grad_clip=-1"], "train.grad_clip must be > 0, got -1.0"),
    (["eval", "--student", "runs/no_run/checkpoints/step_000050"], "model.student: no such folder: runs/no_run"),
])
def test_bad_input_is_reported_before_torch_is_imported(tmp_path, argv, message):
    done, seconds = _run_script(*argv, cwd=tmp_path, importtime=True)
    lines = _messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    imported = _imported_top_level(done.stderr)
    assert "reopold_agent" in imported  # the measurement sees the package's own imports
    assert not imported & {"torch", "transformers", "accelerate"}, sorted(imported)
    print(f"{argv}: {seconds:.2f} s to the error")


def test_model_paths_that_name_a_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    cases = [
        (["eval", "--student", str(tmp_path / "runs" / "x" / "checkpoint-50")], "model.student: no such folder: "),
        (["eval", "--student", "runs/ckpt"], "model.student: no such folder: runs/ckpt"),
        (["eval", "--student", "./ckpt"], "model.student: no such folder: ./ckpt"),
        (["eval", "--student", "weights.bin"], "model.student: not a folder: weights.bin"),
        (["train", "--student", str(tmp_path / "runs"), "--teacher", "/nowhere/teacher"],
         "model.teacher: no such folder: /nowhere/teacher"),
        (["sft", "--student", str(tmp_path / "runs"), "--data", "missing.jsonl"], "--data: no such file: missing.jsonl"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_hub_ids_are_left_to_the_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for hub_id in ("Qwen/Qwen2.5-1.5B-Instruct", "gpt2"):
        assert not names_local_folder(hub_id)
        check_model_path(hub_id, "model.student")
    assert names_local_folder("/abs/model") and names_local_folder("a/b/c") and names_local_folder("~/m")


def test_counts_and_encodings_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sft", "--steps", "0"])
    assert info.value.code == 2 and "argument --steps: must be >= 1, got 0" in capsys.readouterr().err
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("train:\n  lr: 1.0e-4  # caf\xe9\n".encode("latin-1"))
    assert main(["train", "--config", str(latin)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"config file {latin} is not UTF-8 text" in err and len(err.splitlines()) == 1


def test_seed_precision_and_device_flags_set_their_config_fields(capsys):
    for command in ("train", "eval", "sft"):
        config = resolve_config(build_parser().parse_args([command, "--seed", "7", "--bf16", "--device", "cpu"]))
        assert (config.train.seed, config.model.dtype, config.model.device) == (7, "bfloat16", "cpu")
        config = resolve_config(build_parser().parse_args([command, "--fp32", "--device", "cuda:1"]))
        assert (config.model.dtype, config.model.device) == ("float32", "cuda:1")
    config = resolve_config(build_parser().parse_args(["train", "--seed", "7", "--set", "train.seed=9"]))
    assert config.train.seed == 9  # --set comes last
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--bf16", "--fp32"])
    assert main(["train", "--device", "gpu"]) == 2
    assert "model.device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    assert main(["train", "--seed", "-1"]) == 2
    assert "train.seed must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_a_cuda_device_without_a_gpu_is_one_line(models, capsys):
    assert main(["eval", "--student", str(models[0]), "--device", "cuda", "--num-problems", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.device=cuda: no CUDA GPU is visible here" in err and len(err.splitlines()) == 1


def test_sft_in_bf16_on_the_named_device(models, tmp_path):
    out = tmp_path / "sft"
    assert main(["sft", "--student", str(models[0]), "--steps", "2", "--bf16", "--device", "cpu", "--seed", "3",
                 "--output-dir", str(out)]) == 0
    from safetensors.torch import load_file

    params = load_file(str(out / "model.safetensors"))
    assert all(p.dtype == torch.float32 for p in params.values())  # autocast: the weights stay float32


USER_ENV = textwrap.dedent("""\
    import sys
    sys.path.insert(0, {repo!r})  # for tests.envs.example_env only; this module is found in the working directory
    import gymnasium
    from tests.envs.example_env import UnitsEnv

    gymnasium.register(id="mine/Units-v0", entry_point=UnitsEnv)
    """)


def test_user_environment_from_the_working_directory_evaluates_its_small_split(models, tmp_path):
    """``--env my_module:...`` imports ./my_module.py from the console script as ``python -m``
    would; its eval split of 2 items is evaluated whole, said once, instead of the preset's 500;
    ``--output-dir`` receives the metrics and the episodes."""
    (tmp_path / "my_module.py").write_text(USER_ENV.format(repo=str(REPO)))
    out = tmp_path / "eval_out"
    done, _ = _run_script("eval", "--env", "my_module:mine/Units-v0", "--student", str(models[0]),
                          "--samples", "1", "--set", "rollout.max_turn_tokens=8", "--output-dir", str(out),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    notes = [line for line in done.stderr.splitlines() if "holds 2 items" in line]
    assert notes == ["the eval split of mine/Units-v0 holds 2 items, fewer than eval.num_problems=500: "
                     "evaluating those 2"], done.stderr
    printed = json.loads(done.stdout)
    written = json.loads((out / "eval_metrics.json").read_text())
    assert written == printed and written["eval/num_problems"] == 2.0
    lines = (out / "eval_trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 problems, greedy and one sample each
    assert {json.loads(line)["task"] for line in lines} == {"units"}


def test_eval_output_dir_that_is_a_file_is_one_line(models, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    assert main(["eval", "--student", str(models[0]), "--num-problems", "1", "--output-dir", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--output-dir {blocker}:" in err and len(err.splitlines()) == 1, err


def test_eval_with_teacher_writes_both_test_time_scaling_curves(models, tmp_path, capsys):
    """``eval --with-teacher --samples 4``: the teacher plays the same problems; the table holds
    pass@k and maj@k for k = 1, 2, 4 of both models, and their cost grows with k."""
    import csv

    out = tmp_path / "eval_out"
    assert main(["eval", "--task", "tool_math", "--student", str(models[0]), "--teacher", str(models[1]),
                 "--with-teacher", "--num-problems", "2", "--samples", "4", "--set", "rollout.max_turn_tokens=8",
                 "--output-dir", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(models[0]) and report["teacher"]["model"] == str(models[1])
    assert report["teacher"]["eval/num_problems"] == 2.0 and "eval/pass@4" in report["teacher"]
    with (out / "test_time_scaling.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["k"]) for r in rows] == [("student", "1"), ("student", "2"), ("student", "4"),
                                                    ("teacher", "1"), ("teacher", "2"), ("teacher", "4")]
    for model in ("student", "teacher"):
        mine = [r for r in rows if r["model"] == model]
        assert float(mine[0]["pass@k"]) == pytest.approx(report.get("teacher", report)["eval/pass@1"]
                                                        if model == "teacher" else report["eval/pass@1"])
        tokens = [float(r["tokens_per_problem"]) for r in mine]
        assert tokens == sorted(tokens) and tokens[-1] == pytest.approx(4 * tokens[0], rel=0.02)  # rounded to 0.1
    assert (out / "test_time_scaling.md").read_text().startswith("| model | k |")
    assert (out / "test_time_scaling.png").stat().st_size > 0
    lines = (out / "eval_trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (2 + 2 * 4)  # both models: 2 greedy and 8 sampled episodes


def test_eval_with_teacher_checks_the_teacher_folder_first(models, tmp_path, capsys):
    assert main(["eval", "--student", str(models[0]), "--teacher", str(tmp_path / "gone"), "--with-teacher",
                 "--num-problems", "1"]) == 2
    assert f"model.teacher: no such folder: {tmp_path / 'gone'}" in capsys.readouterr().err
