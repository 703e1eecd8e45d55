"""Guarding a run directory: one training at a time, never a silent overwrite, one-line errors.

Before a training writes anything, :func:`open_run_directory`:

1. checks that the directory can be written (not a file, not read-only);
2. takes its lock (``.lock``, :class:`~reopold_agent.file_lock.FileLock`) for the whole run, so
   a second training into the same directory is refused while the first runs; a lock left by a
   dead process is taken over (and said so);
3. refuses a fresh run into a directory that already holds one (checkpoints, metrics or
   trajectories) unless ``overwrite`` clears the run's own files; with ``resume``, refuses a
   directory holding a run but no complete checkpoint. ``resume`` into a directory with no run
   at all starts a new run and says so, so a job script that always passes ``--resume`` works
   from its first launch.

Nothing here imports torch: the CLI runs these checks before loading anything heavy.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .file_lock import FileLock, LockHeld, read_holder

RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "tensorboard", "wandb", "trajectories", "checkpoints", "images",
               "plots")
"""What a training writes into its run directory; ``overwrite`` removes these and nothing else."""
LOCK_NAME = ".lock"


class RunDirectoryError(Exception):
    """The run directory cannot be used as asked; the message is one line naming it."""


def describe_os_error(path: str | Path, exc: OSError) -> str:
    """``cannot write <path>: <reason>`` with a hint for a full disk or a read-only place."""
    where = exc.filename if exc.filename else path
    reason = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EROFS: "choose a writable --output-dir", errno.EACCES: "choose a writable --output-dir",
            errno.EPERM: "choose a writable --output-dir"}.get(exc.errno)
    return f"cannot write {where}: {reason}" + (f" ({hint})" if hint else "")


def check_writable(run_dir: str | Path) -> None:
    """Create ``run_dir`` if missing and prove a file can be written in it.

    Raises:
        RunDirectoryError: the path (or a parent) is a file, or the place is read-only or full.
    """
    run_dir = Path(run_dir)
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise RunDirectoryError(f"output directory {run_dir}: {parent} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirectoryError(f"output directory {run_dir}: {describe_os_error(run_dir, exc)}") from None


def run_contents(run_dir: str | Path) -> list[str]:
    """What of a run ``run_dir`` already holds: checkpoints, metrics, trajectories ([] if none)."""
    run_dir = Path(run_dir)
    found = []
    if any((run_dir / "checkpoints").glob("step_*")):
        found.append("checkpoints")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    if any((run_dir / "trajectories").glob("*.jsonl")):
        found.append("trajectories")
    return found


def has_complete_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a folder marked complete (loadable or not)."""
    return any((Path(run_dir) / "checkpoints").glob("step_*/COMPLETE"))


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's own files (:data:`RUN_ENTRIES`); anything else in the folder stays."""
    for name in RUN_ENTRIES:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def open_run_directory(run_dir: str | Path, *, resume: bool, overwrite: bool,
                       log: Callable[[str], None] = print) -> FileLock:
    """Check, lock and (with ``overwrite``) clear ``run_dir`` for a training; returns the held lock.

    The caller releases the lock when the training ends (``with`` or ``release()``).

    Raises:
        RunDirectoryError: the directory cannot be written, another training holds it, it
            holds a run and neither ``resume`` nor ``overwrite`` was given, or ``resume`` was
            given for a run without a complete checkpoint.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirectoryError("--resume continues the run in the output directory and --overwrite deletes it: "
                                "give one of them")
    check_writable(run_dir)
    lock = FileLock(run_dir / LOCK_NAME)
    try:
        lock.acquire()
    except LockHeld:
        holder = read_holder(run_dir / LOCK_NAME)
        raise RunDirectoryError(f"another training ({holder}) is writing to {run_dir}; wait for it to end "
                                "or choose another --output-dir") from None
    except OSError as exc:
        raise RunDirectoryError(f"output directory {run_dir}: {describe_os_error(run_dir, exc)}") from None
    try:
        if lock.stale_pid is not None:
            log(f"took over the lock of {run_dir} left by pid {lock.stale_pid}, which is no longer running")
        _check_contents(run_dir, resume=resume, overwrite=overwrite, log=log)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_contents(run_dir: Path, *, resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
    found = run_contents(run_dir)
    if resume:
        if has_complete_checkpoint(run_dir):
            return
        if found:
            raise RunDirectoryError(f"--resume: {run_dir} holds a run ({', '.join(found)}) but no complete "
                                    "checkpoint (it stopped before its first save); start it again with --overwrite")
        log(f"--resume: no run in {run_dir} yet; starting a new one at step 0")
        return
    if not found:
        return
    if not overwrite:
        raise RunDirectoryError(f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume, "
                                "replace it with --overwrite, or choose another --output-dir")
    try:
        clear_run(run_dir)
    except OSError as exc:
        raise RunDirectoryError(f"--overwrite: {describe_os_error(run_dir, exc)}") from None
    log(f"--overwrite: removed the earlier run in {run_dir} ({', '.join(found)})")
