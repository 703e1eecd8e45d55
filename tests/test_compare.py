"""``reopold-agent compare``: planning, run states, and a real two-objective comparison."""

import json

import pytest

from reopold_agent.cli import main
from reopold_agent.compare import CompareRun, plan_runs, run_status, train_arguments
from tests import tiny


def test_plan_is_seed_major_and_validated(tmp_path):
    runs = plan_runs(["reopold", "rkl"], [0, 1], tmp_path)
    assert [(r.objective, r.seed) for r in runs] == [("reopold", 0), ("rkl", 0), ("reopold", 1), ("rkl", 1)]
    assert runs[1].run_dir == tmp_path / "rkl_seed0"
    with pytest.raises(ValueError, match="unknown objective.*ppo"):
        plan_runs(["reopold", "ppo"], [0], tmp_path)
    with pytest.raises(ValueError, match="must not repeat"):
        plan_runs(["rkl", "rkl"], [0], tmp_path)


def test_run_states_pick_fresh_resume_or_overwrite(tmp_path):
    run = CompareRun("rkl", 3, tmp_path / "rkl_seed3")
    assert run_status(run.run_dir) == "fresh"
    args = train_arguments(run, "fresh", ["--task", "tool_math", "--set", "objective.name=sft"])
    assert args[:3] == ["train", "--task", "tool_math"] and args[-2:] == ["--set", "train.seed=3"]
    assert args.index("objective.name=rkl") > args.index("objective.name=sft")  # the run's objective wins
    run.run_dir.mkdir()
    (run.run_dir / "config.yaml").write_text("train: {steps: 2}\n")
    assert train_arguments(run, run_status(run.run_dir), [])[-1] == "--overwrite"  # started, no checkpoint
    (run.run_dir / "checkpoints" / "step_000001").mkdir(parents=True)
    assert run_status(run.run_dir) == "resumable"
    assert train_arguments(run, "resumable", [])[-1] == "--resume"
    (run.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 2, "eval/greedy_accuracy": 0.5}) + "\n")
    assert run_status(run.run_dir) == "done"


def test_compare_bad_flags_are_one_line(tmp_path, capsys):
    assert main(["compare", "--objectives", "reopold,ppo", "--output-dir", str(tmp_path)]) == 2
    assert "unknown objective(s) ppo" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0,x", "--output-dir", str(tmp_path)]) == 2
    assert main(["compare", "--target", "7", "--output-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_two_objectives_train_report_and_rerun_keeps_them(tmp_path, capsys, monkeypatch):
    student, teacher = tiny.save_tool_math_models(tmp_path / "models")
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "tool_math", "--student", str(student), "--teacher", str(teacher),
            "--objectives", "reopold,rkl", "--seeds", "0", "--steps", "1", "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=16", "--set", "rollout.max_episode_tokens=160",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.teacher=false",
            "--set", "train.torch_threads=1"]
    assert main(argv) == 0
    for name in ("compare.csv", "compare.md", "compare_accuracy.png", "compare_diagnostics.png"):
        assert (out / name).exists(), name
    rows = (out / "compare.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["reopold", "rkl"]
    for objective in ("reopold", "rkl"):
        config = (out / f"{objective}_seed0" / "config.yaml").read_text()
        assert f"name: {objective}" in config and "steps: 1" in config
    assert run_status(out / "rkl_seed0") == "done"
    capsys.readouterr()
    assert main(argv) == 0  # everything done: nothing retrains
    assert capsys.readouterr().out.count("done, kept") == 2
