"""End to end through the CLI: a run directory is never clobbered or mixed, a resume continues
exactly where the checkpoint left off, signals save the last complete step, and output errors
are one line. Tiny offline models (tests/test_train_e2e.py's fixture)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reopold_agent.cli import main
from reopold_agent.run_logging import is_evaluation_record, read_metrics
from tests.test_train_e2e import REPO, _args, tiny_models  # noqa: F401  (a fixture)


def _rows(out: Path) -> tuple[list[int], list[int]]:
    """(steps of training rows, steps of student evaluation rows) of a run, in file order."""
    records = read_metrics(out)
    train = [r["step"] for r in records if not is_evaluation_record(r)]
    evals = [r["step"] for r in records if is_evaluation_record(r) and "eval/greedy_accuracy" in r]
    return train, evals


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_fresh_train_into_a_run_directory_is_refused_until_overwrite(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_models, out, steps=1, extra=["--set", "eval.num_problems=0"])) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(_args(tiny_models, out, steps=1, extra=["--set", "eval.num_problems=0"])) == 2
    err = _one_error_line(capsys)
    assert f"{out} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    assert main(_args(tiny_models, out, steps=2, extra=["--overwrite", "--set", "eval.num_problems=0"])) == 0
    assert "--overwrite: removed the earlier run" in capsys.readouterr().out
    assert _rows(out)[0] == [0, 1]  # the new run's rows only
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002"]


def test_a_second_training_into_a_locked_directory_is_refused(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from reopold_agent.run_directory import open_run_directory
        open_run_directory({str(out)!r}, resume=False, overwrite=False)
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_args(tiny_models, out, steps=1)) == 2
        err = _one_error_line(capsys)
        assert f"another training (pid {holder.pid}) is writing to {out}" in err
        assert main(_args(tiny_models, out, steps=1, extra=["--resume"])) == 2  # resume waits its turn too
        assert "another training" in _one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "metrics.jsonl").exists()


def test_resume_without_a_checkpoint(tiny_models, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    assert main(_args(tiny_models, fresh, steps=1, extra=["--resume", "--set", "eval.num_problems=0"])) == 0
    assert f"--resume: no run in {fresh} yet; starting a new one at step 0" in capsys.readouterr().out
    shutil.rmtree(fresh / "checkpoints")  # as if killed before its first save
    assert main(_args(tiny_models, fresh, steps=2, extra=["--resume"])) == 2
    err = _one_error_line(capsys)
    assert "no complete checkpoint" in err and "--overwrite" in err


def test_resume_continues_without_duplicate_rows_and_redoes_a_missing_evaluation(tiny_models, tmp_path, capsys):
    """A run killed after logging step 2 and before its final checkpoint and evaluation: the
    resumed run's metrics and trajectory files are those of an uninterrupted run."""
    out = tmp_path / "run"
    extra = ["--set", "eval.every=2", "--set", "train.save_every=2"]
    assert main(_args(tiny_models, out, steps=3, extra=extra)) == 0
    assert _rows(out) == ([0, 1, 2], [0, 2, 3])
    # rewind the directory to "killed during the evaluation at step 2, after step 2 was logged"
    shutil.rmtree(out / "checkpoints" / "step_000003")
    (out / "checkpoints" / "LATEST").write_text("step_000002")
    records = read_metrics(out)
    kept = [r for r in records if not (is_evaluation_record(r) and r["step"] >= 2)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (out / "trajectories" / "eval_000003.jsonl").unlink()
    capsys.readouterr()
    assert main(_args(tiny_models, out, steps=3, extra=[*extra, "--resume"])) == 0
    printed = capsys.readouterr().out
    assert f"resumed from step 2 ({out / 'checkpoints' / 'step_000002'})" in printed
    assert _rows(out) == ([0, 1, 2], [0, 2, 3])  # step 2 once; the lost evaluation at 2 redone
    assert (out / "trajectories" / "eval_000002.jsonl").exists() and (out / "trajectories" / "eval_000003.jsonl").exists()
    assert "greedy accuracy on 3 problems: teacher" in printed and "student before" in printed
    assert "after" in printed and "(step 3)" in printed


def test_a_corrupt_newest_checkpoint_falls_back_and_another_student_is_one_line(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--set", "train.save_every=1", "--set", "eval.num_problems=0"]
    assert main(_args(tiny_models, out, steps=2, extra=extra)) == 0
    weights = out / "checkpoints" / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert main(_args(tiny_models, out, steps=3, extra=[*extra, "--resume"])) == 0
    printed = capsys.readouterr().out
    assert f"cannot load checkpoint {weights}: SafetensorError" in printed
    assert "falling back to the older checkpoint" in printed and "resumed from step 1" in printed
    assert (out / "checkpoints" / "unreadable_step_000002").is_dir()
    assert _rows(out)[0] == [0, 1, 2]
    assert (out / "checkpoints" / "LATEST").read_text() == "step_000003"
    config_before = (out / "config.yaml").read_text()
    student, teacher = tiny_models
    # resuming with another (wider) student: every checkpoint mismatches; stop, naming the newest
    assert main(_args((teacher, teacher), out, steps=4, extra=[*extra, "--resume"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--resume: cannot load checkpoint {out / 'checkpoints' / 'step_000003'}" in err[0]
    assert "a checkpoint of another model?" in err[0]
    assert (out / "config.yaml").read_text() == config_before  # the refused resume changed nothing


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(tiny_models, tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the write of checkpoint 2's optimizer state (after part of it was written)."""
    from reopold_agent import checkpoint

    real_save = checkpoint._save_torch

    def save(obj, path):
        if "step_000002" in str(path):
            Path(path).write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path)

    monkeypatch.setattr(checkpoint, "_save_torch", save)
    out = tmp_path / "run"
    extra = ["--set", "train.save_every=1", "--set", "eval.num_problems=0"]
    assert main(_args(tiny_models, out, steps=3, extra=extra)) == 2
    err = _one_error_line(capsys)
    assert "saving checkpoint step 2: cannot write" in err and "No space left on device (free some space)" in err
    assert "the last complete checkpoint, step_000001, is intact: continue with --resume" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step_000001"]
    monkeypatch.setattr(checkpoint, "_save_torch", real_save)
    assert main(_args(tiny_models, out, steps=3, extra=[*extra, "--resume"])) == 0
    assert _rows(out)[0] == [0, 1, 2]


def test_an_output_path_that_is_a_file_is_one_line(tiny_models, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a directory")
    assert main(_args(tiny_models, tmp_path / "taken", steps=1)) == 2
    assert "taken is a file, not a directory" in _one_error_line(capsys)
    student, _ = tiny_models
    assert main(["sft", "--student", str(student), "--steps", "1", "--output-dir", str(tmp_path / "taken")]) == 2
    assert "taken is a file, not a directory" in _one_error_line(capsys)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_saves_the_last_complete_step(tiny_models, tmp_path, capsys, signum, code):
    out = tmp_path / "run"
    argv = _args(tiny_models, out, steps=40, extra=["--set", "train.save_every=100", "--set", "eval.num_problems=0"])
    proc = subprocess.Popen([sys.executable, "-m", "reopold_agent.cli", *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(out)[0]) < 2:
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    done = len(_rows(out)[0])
    assert 2 <= done < 40
    assert f"saved checkpoint step {done}; continue with --resume" in stdout
    assert "Traceback" not in stderr
    assert (out / "checkpoints" / "LATEST").read_text() == f"step_{done:06d}"
    assert not (out / ".lock").exists()
    capsys.readouterr()
    assert main(_args(tiny_models, out, steps=done + 1,
                      extra=["--resume", "--set", "train.save_every=100", "--set", "eval.num_problems=0"])) == 0
    assert f"resumed from step {done}" in capsys.readouterr().out
    assert _rows(out)[0] == list(range(done + 1))


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged user and mount namespaces (unshare -rm)")
def test_a_real_full_disk_and_a_read_only_mount_are_one_line(tiny_models, tmp_path):
    """An 8 MiB tmpfs in a private mount namespace: a first session trains a step there; the
    disk is then filled and a resumed session stops with one line, the checkpoint intact. A
    read-only remount is refused before anything loads."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = mnt / "run"
    cli = f"{sys.executable} -m reopold_agent.cli"
    # the sandbox cannot nest its namespaces inside this one; the run's tool calls (of an untrained
    # tiny student) execute inside the test's own user and mount namespaces instead
    common = " ".join(_args(tiny_models, out, steps=1, extra=["--set", "eval.num_problems=0",
                                                              "--set", "sandbox.allow_unisolated=true"])[3:])
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=8m none {mnt}
        {cli} train --steps 1 {common.replace('--steps 1 ', '')} > {tmp_path}/first.out 2>&1
        echo "first=$?"
        avail=$(df --output=avail -B1 {mnt} | tail -1)
        head -c $((avail - 16384)) /dev/zero > {mnt}/filler 2>/dev/null
        {cli} train --steps 2 --resume {common.replace('--steps 1 ', '')} > {tmp_path}/full.out 2> {tmp_path}/full.err
        echo "full=$?"
        {sys.executable} -c "
import sys
sys.path.insert(0, '{REPO}')
from reopold_agent.checkpoint import latest_checkpoint
print('latest=' + latest_checkpoint('{out}').name)"
        mount -o remount,ro {mnt}
        {cli} train --steps 2 --resume {common.replace('--steps 1 ', '')} > /dev/null 2> {tmp_path}/ro.err
        echo "ro=$?"
    """)
    done = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
    assert lines.get("first") == "0", (tmp_path / "first.out").read_text()[-2000:]
    # the sandbox's own warning about running unisolated in this namespace comes first
    full_err = [line for line in (tmp_path / "full.err").read_text().strip().splitlines()
                if not line.startswith("sandbox isolation unavailable")]
    assert lines["full"] == "2" and len(full_err) == 1, full_err
    full_err = full_err[0]
    assert "No space left on device" in full_err and "step_000001, is intact" in full_err
    assert lines["latest"] == "step_000001"
    ro_err = [line for line in (tmp_path / "ro.err").read_text().strip().splitlines()
              if not line.startswith("sandbox isolation unavailable")]
    assert lines["ro"] == "2" and len(ro_err) == 1 and "Read-only file system" in ro_err[0], ro_err


def test_sft_data_skips_wrong_typed_lines_and_trains_on_the_rest(tiny_models, tmp_path, capsys):
    from reopold_agent.demo.embedded import gold_conversations
    from reopold_agent.trajectory import Trajectory
    from reopold_agent.trajectory_io import trajectory_to_json

    lines = [trajectory_to_json(Trajectory(token_ids=[], source=[], turn=[], loss_mask=[], logprobs=[],
                                           messages=c, reward=1.0))
             for c in gold_conversations("tool_math", count=4)]
    bad = [json.loads(lines[0]), json.loads(lines[0])]
    bad[0]["messages"] = [{"role": "user", "content": 3}]
    bad[1]["images"] = [1]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([lines[0], json.dumps(bad[0]), lines[1], json.dumps(bad[1]), *lines[2:]]) + "\n")
    student, _ = tiny_models
    assert main(["sft", "--student", str(student), "--steps", "2", "--data", str(data),
                 "--output-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {data}:2: field 'messages'" in printed and f"skipped {data}:4: field 'images'" in printed
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_sft_skips_a_conversation_the_template_cannot_render(tiny_models, capsys):
    from reopold_agent.sft_command import _tokenize_all
    from reopold_agent.demo.embedded import gold_conversations
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0])
    good = gold_conversations("tool_math", count=2)
    odd = [{"role": "user", "content": [{"type": "video", "url": "x"}]}, good[0][-1]]
    examples = _tokenize_all(tokenizer, [good[0], odd, good[1]], None)
    assert len(examples) == 2
    assert "skipped conversation 2: " in capsys.readouterr().out
