"""``replay`` / ``plot`` argument parsing and user errors (exit code 2 through the CLI)."""

import argparse
import re

import pytest

from reopold_agent.errors import UsageError
from reopold_agent.replay.commands import add_replay_commands, run_plot_command, run_replay_command


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_replay_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def test_export_with_step_and_index(synthetic_run, tmp_path, capsys):
    out = tmp_path / "p.html"
    args = _args("replay", str(synthetic_run), "--export", "html", str(out), "--step", "1",
                 "--index", "1", "--no-tokenizer", "--color", "entropy")
    assert run_replay_command(args) == 0
    page = out.read_text()
    assert "visual_qa" in page and "<option value='entropy' selected>" in page
    err = capsys.readouterr().err
    assert "skipped " in err and "step_000001.jsonl:2: not valid JSON" in err


def test_default_export_starts_with_training_episodes_not_the_teachers(synthetic_run, tmp_path,
                                                                         capsys):
    from reopold_agent.trajectory_io import trajectory_to_json

    from .fixtures import tool_trajectory

    teacher = [trajectory_to_json(tool_trajectory(0, sample_index=g, teacher_logprobs=None))
               for g in range(3)]
    (synthetic_run / "trajectories" / "eval_teacher_000000.jsonl").write_text(
        "\n".join(teacher) + "\n")
    out = tmp_path / "p.html"
    args = _args("replay", str(synthetic_run), "--export", "html", str(out), "--limit", "3",
                 "--no-tokenizer")
    assert run_replay_command(args) == 0
    index = out.read_text()
    labels = re.findall(r"<a href='[^']*'>([^<]+)</a>", index)
    assert labels == ["step_000000.jsonl:1", "eval_teacher_000000.jsonl:1",
                      "eval_teacher_000000.jsonl:2"]
    assert "<td>teacher</td>" in index and "<td>step</td>" in index


@pytest.mark.parametrize("argv, message", [
    (["replay", "{missing}"], "does not exist"),
    (["replay", "{run}", "--export", "pdf", "x.pdf"], "unknown export format"),
    (["replay", "{run}", "--export", "html", "x.html", "--filter", "reward>1"], "no trajectories match"),
    (["replay", "{run}", "--export", "html", "x.html", "--index", "99"], "out of range"),
    (["replay", "{run}", "--filter", "bogus=1"], "filter term"),
    (["replay", "{run}"], "needs an interactive terminal"),
    (["plot", "{missing}"], "not a run directory"),
])
def test_user_errors_are_usage_errors(synthetic_run, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(run=synthetic_run, missing=tmp_path / "nope") for a in argv]
    args = _args(*argv)
    run = run_replay_command if args.command == "replay" else run_plot_command
    with pytest.raises(UsageError, match=message):
        run(args)


def test_empty_trajectories_folder(tmp_path):
    (tmp_path / "trajectories").mkdir()
    with pytest.raises(UsageError, match="no trajectory files"):
        run_replay_command(_args("replay", str(tmp_path)))


def test_plot_command_prints_the_figures(synthetic_run, tmp_path, capsys):
    assert run_plot_command(_args("plot", str(synthetic_run), "--out", str(tmp_path / "f"))) == 0
    out = capsys.readouterr()
    assert "training_curves.png" in out.out and "reward_histogram.png" in out.out
    assert "step_000002.jsonl:3" in out.err


def _add_wrong_typed_lines(run):
    """Valid JSON, wrong types: step_000000.jsonl gets ``"images": [1]`` on line 2 and a
    string reward on line 3; metrics.jsonl a row with ``"step": "abc"`` on line 4."""
    import json

    from reopold_agent.trajectory_io import trajectory_to_json

    from .fixtures import tool_trajectory

    rows = []
    for field, value in (("images", [1]), ("reward", "high")):
        record = json.loads(trajectory_to_json(tool_trajectory(0, sample_index=len(rows) + 1)))
        record[field] = value
        rows.append(json.dumps(record))
    with open(run / "trajectories" / "step_000000.jsonl", "a") as fh:
        fh.write("".join(r + "\n" for r in rows))
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": "abc", "objective/loss": 1.0}) + "\n")


def test_export_skips_wrong_typed_lines_and_writes_the_rest(synthetic_run, tmp_path, capsys):
    from reopold_agent.cli import main

    _add_wrong_typed_lines(synthetic_run)
    out = tmp_path / "all.html"
    assert main(["replay", str(synthetic_run), "--export", "html", str(out), "--no-tokenizer"]) == 0
    captured = capsys.readouterr()
    step0 = synthetic_run / "trajectories" / "step_000000.jsonl"
    assert f"skipped {step0}:2: field 'images': expected a list of" in captured.err
    assert f"skipped {step0}:3: " in captured.err and "'reward'" in captured.err
    pages = list((tmp_path / "all_files").glob("*.html"))
    assert out.exists() and len(pages) >= 4


def test_plot_skips_a_metrics_row_with_a_text_step_and_wrong_typed_trajectories(synthetic_run, tmp_path, capsys):
    from reopold_agent.cli import main

    _add_wrong_typed_lines(synthetic_run)
    assert main(["plot", str(synthetic_run), "--out", str(tmp_path / "f")]) == 0
    captured = capsys.readouterr()
    assert f"skipped {synthetic_run / 'metrics.jsonl'}:4: 'step' must be an integer, got \"abc\"" in captured.err
    assert f"{synthetic_run / 'trajectories' / 'step_000000.jsonl'}:2: field 'images'" in captured.err
    assert "training_curves.png" in captured.out and "reward_histogram.png" in captured.out
