"""Lazy run index: files, line offsets, scalar summaries, bad lines, runs still being written."""

import pytest

from reopold_agent.replay import loading
from reopold_agent.replay.loading import open_run
from reopold_agent.trajectory_io import LineError, trajectory_to_json

from .fixtures import tool_trajectory


def test_open_lists_files_without_reading_them(synthetic_run):
    index = open_run(synthetic_run)
    names = [(f.path.name, f.kind, f.step) for f in index.files]
    assert names == [("step_000000.jsonl", "step", 0), ("step_000001.jsonl", "step", 1),
                     ("eval_000001.jsonl", "eval", 1), ("step_000002.jsonl", "step", 2)]
    assert all(not f.summaries for f in index.files)
    assert index.info.reopold.switch_step == 1  # round(0.33 * 3)
    assert index.info.floor == pytest.approx(-1.7199611490370517, abs=1e-12)
    assert [index.info.phase(k) for k in (0, 1, 2)] == ["exploration", "refinement", "refinement"]


def test_summaries_come_from_scalars_and_parse_nothing(synthetic_run, monkeypatch):
    calls = []
    real = loading.trajectory_from_json
    monkeypatch.setattr(loading, "trajectory_from_json", lambda line: calls.append(1) or real(line))
    index = open_run(synthetic_run)
    first = index.file_summaries(index.files[0])
    assert calls == []  # the fast path decodes no per-token list
    (s,) = first
    assert (s.line, s.step, s.task, s.reward, s.truncated, s.tool_calls, s.num_tokens, s.scored) == \
        (1, 0, "tool_math", 1.0, False, 1, 12, True)
    assert all(not f.summaries for f in index.files[1:])  # other files untouched
    traj = index.load(s)
    assert calls == [1] and traj.logprobs[3] == -1.0


def test_bad_lines_are_reported_with_line_numbers_and_skipped(synthetic_run):
    index = open_run(synthetic_run)
    summaries = index.summaries()
    errors = [str(e) for e in index.errors]
    assert any(e.endswith("step_000001.jsonl:2: not valid JSON (Expecting ',' delimiter at column 20)")
               for e in errors)
    assert any("step_000002.jsonl:3:" in e and "still being written" in e for e in errors)
    assert [s.label for s in summaries if s.error is None] == [
        "step_000000.jsonl:1", "step_000001.jsonl:1", "step_000001.jsonl:3",
        "eval_000001.jsonl:1", "step_000002.jsonl:1", "step_000002.jsonl:2"]


def test_line_without_optional_fields_is_read_by_the_slow_path(synthetic_run):
    index = open_run(synthetic_run)
    old = index.file_summaries(index.files[3])[1]
    assert (old.sample_index, old.scored, old.tool_calls) == (1, False, 0)
    traj = index.load(old)
    assert traj.teacher_logprobs is None and traj.entropy is None


def test_a_growing_file_is_rescanned_from_its_last_complete_line(tmp_path):
    path = tmp_path / "t.jsonl"
    line = trajectory_to_json(tool_trajectory(0))
    path.write_text(line + "\n" + line[:40])
    index = open_run(path)
    tf = index.files[0]
    first = index.file_summaries(tf)
    assert [s.complete for s in first] == [True, False]
    assert isinstance(index.load(first[1]), LineError)
    with open(path, "a") as fh:
        fh.write(line[40:] + "\n" + line + "\n")
    again = index.file_summaries(tf)
    assert [(s.line, s.complete, s.error) for s in again] == [(1, True, None), (2, True, None),
                                                              (3, True, None)]
    assert index.load(again[1]).step == 0


def test_new_files_appear_on_refresh(synthetic_run):
    index = open_run(synthetic_run)
    (synthetic_run / "trajectories" / "step_000003.jsonl").write_text(
        trajectory_to_json(tool_trajectory(3)) + "\n")
    assert index.refresh() == 1 and index.files[-1].step == 3


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_run(tmp_path / "missing")
    (tmp_path / "empty" / "trajectories").mkdir(parents=True)
    with pytest.raises(ValueError, match="no trajectory files"):
        open_run(tmp_path / "empty")


def test_single_file_inside_a_run_keeps_the_run_config(synthetic_run):
    index = open_run(synthetic_run / "trajectories" / "step_000001.jsonl")
    assert index.info.root == synthetic_run and index.files[0].kind == "step"


def test_stale_errors_go_when_the_line_is_finished_or_the_file_rewritten(tmp_path):
    path = tmp_path / "t.jsonl"
    line = trajectory_to_json(tool_trajectory(0))
    path.write_text(line[:40])
    index = open_run(path)
    index.file_summaries(index.files[0])
    assert [e.line for e in index.errors] == [1]
    path.write_text(line + "\n")
    assert [s.complete for s in index.file_summaries(index.files[0])] == [True]
    assert index.errors == []
    path.write_text("{bad\n")  # shorter than before: the file was rewritten
    (bad,) = index.file_summaries(index.files[0])
    assert bad.error is not None and [e.line for e in index.errors] == [1]


def test_teacher_evaluation_is_its_own_kind_after_the_steps_own_episodes(synthetic_run):
    teacher = synthetic_run / "trajectories" / "eval_teacher_000000.jsonl"
    teacher.write_text(trajectory_to_json(tool_trajectory(0, teacher_logprobs=None)) + "\n")
    index = open_run(synthetic_run)
    names = [(f.path.name, f.kind, f.step) for f in index.files[:3]]
    assert names == [("step_000000.jsonl", "step", 0), ("eval_teacher_000000.jsonl", "teacher", 0),
                     ("step_000001.jsonl", "step", 1)]
    (s,) = index.file_summaries(index.files[1])
    assert s.kind == "teacher" and s.evaluation
    assert not index.file_summaries(index.files[0])[0].evaluation
