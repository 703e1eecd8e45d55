"""Atomic checkpoints: a ``kill -9`` at any moment never corrupts the latest one.

Layout inside the run directory::

    checkpoints/step_000040/   model (save_pretrained), tokenizer, optimizer.pt, state.pt, COMPLETE
    checkpoints/LATEST         text file naming the newest complete checkpoint

A checkpoint is written into a temporary folder, fsync'ed, marked ``COMPLETE`` and renamed into
place; only then is ``LATEST`` replaced (write-to-temp + ``os.replace``, atomic on POSIX).
Loading follows ``LATEST`` and falls back to the newest folder carrying ``COMPLETE``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (restored by :func:`set_rng_state`)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, *, model: Any, tokenizer: Any, optimizer: Any,
                    scheduler: Any, extra: dict[str, Any], keep: int = 2, image_processor: Any = None) -> Path:
    """Write checkpoint ``step`` atomically and point ``LATEST`` at it; keep the newest ``keep``.

    ``image_processor`` (vision-language students) is saved beside the tokenizer, so the
    checkpoint loads with its processor like any Hugging Face VL folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:06d}_", dir=root))
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if image_processor is not None:
        image_processor.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save({"step": step, "rng": rng_state(), **extra}, tmp / "state.pt")
    (tmp / COMPLETE).write_text(str(step))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _atomic_write(root / "LATEST", final.name)
    _prune(root, keep)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "LATEST"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / COMPLETE).exists():
            return candidate
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists()) if root.exists() else []
    return complete[-1] if complete else None


def load_training_state(checkpoint: Path, *, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG state; returns the saved ``state`` dict."""
    opt = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
