import os
import subprocess
import sys
import textwrap

import pytest

from reopold_agent.file_lock import read_holder
from reopold_agent.run_directory import (RunDirectoryError, check_writable, clear_run, open_run_directory,
                                         run_contents)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(root, *, checkpoint=True):
    """A run directory as a training leaves it (files only, no real model)."""
    (root / "trajectories").mkdir(parents=True)
    (root / "trajectories" / "step_000000.jsonl").write_text("{}\n")
    (root / "metrics.jsonl").write_text('{"step": 0, "objective/loss": 1.0}\n')
    (root / "config.yaml").write_text("train: {steps: 2}\n")
    if checkpoint:
        (root / "checkpoints" / "step_000001").mkdir(parents=True)
        (root / "checkpoints" / "step_000001" / "COMPLETE").write_text("1")
    return root


def test_a_fresh_run_into_a_run_directory_is_refused_and_nothing_changes(tmp_path):
    run = _fake_run(tmp_path / "run")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(RunDirectoryError) as info:
        open_run_directory(run, resume=False, overwrite=False, log=lambda m: None)
    message = str(info.value)
    assert "already holds a run" in message and "--resume" in message and "--overwrite" in message
    assert "\n" not in message
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the lock file went again


def test_overwrite_removes_the_runs_files_and_keeps_the_rest(tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    (run / "tensorboard").mkdir()
    logs = []
    lock = open_run_directory(run, resume=False, overwrite=True, log=logs.append)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "notes.txt"]
    assert any("--overwrite: removed" in m for m in logs)
    lock.release()
    assert not (run / ".lock").exists()


def test_resume_needs_a_complete_checkpoint_when_the_directory_holds_a_run(tmp_path):
    run = _fake_run(tmp_path / "run", checkpoint=False)
    with pytest.raises(RunDirectoryError, match="no complete checkpoint .*--overwrite"):
        open_run_directory(run, resume=True, overwrite=False, log=lambda m: None)
    (run / "checkpoints" / "step_000002").mkdir(parents=True)  # a folder without its COMPLETE marker
    with pytest.raises(RunDirectoryError, match="no complete checkpoint"):
        open_run_directory(run, resume=True, overwrite=False, log=lambda m: None)


def test_resume_into_a_new_directory_starts_a_run_and_says_so(tmp_path):
    logs = []
    lock = open_run_directory(tmp_path / "new", resume=True, overwrite=False, log=logs.append)
    assert logs == [f"--resume: no run in {tmp_path / 'new'} yet; starting a new one at step 0"]
    lock.release()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunDirectoryError, match="give one of them"):
        open_run_directory(tmp_path, resume=True, overwrite=True)


def test_a_second_training_is_refused_while_the_first_holds_the_directory(tmp_path):
    run = tmp_path / "run"
    first = open_run_directory(run, resume=False, overwrite=False)
    with pytest.raises(RunDirectoryError, match=f"another training \\(pid {os.getpid()}\\) is writing to"):
        open_run_directory(run, resume=False, overwrite=False)
    first.release()
    open_run_directory(run, resume=False, overwrite=False).release()


def test_the_lock_of_a_killed_training_is_taken_over(tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        from reopold_agent.run_directory import open_run_directory
        open_run_directory({str(run)!r}, resume=False, overwrite=False)
        os._exit(9)  # dies holding the lock, as after kill -9
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9 and read_holder(run / ".lock").pid is not None
    logs = []
    lock = open_run_directory(run, resume=False, overwrite=False, log=logs.append)
    assert len(logs) == 1 and "took over the lock" in logs[0] and "no longer running" in logs[0]
    lock.release()


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        check_writable(tmp_path / "file")
    with pytest.raises(RunDirectoryError, match="is a file, not a directory"):
        check_writable(tmp_path / "file" / "run")


def test_run_contents_and_clear_run_leave_foreign_files(tmp_path):
    assert run_contents(tmp_path) == []
    _fake_run(tmp_path)
    assert run_contents(tmp_path) == ["checkpoints", "metrics.jsonl", "trajectories"]
    (tmp_path / "data.csv").write_text("keep")
    clear_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["data.csv"]
