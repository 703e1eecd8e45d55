"""Atomic checkpoints: a ``kill -9`` at any moment never corrupts the latest one.

Layout inside the run directory::

    checkpoints/step_000040/   model (save_pretrained), tokenizer, optimizer.pt, state.pt, COMPLETE
    checkpoints/LATEST         text file naming the newest complete checkpoint

A checkpoint is written into a temporary folder, fsync'ed, marked ``COMPLETE`` and renamed into
place; only then is ``LATEST`` replaced (write-to-temp + ``os.replace``, atomic on POSIX). A save
that fails part-way (a full disk) removes its temporary folder and leaves every earlier
checkpoint and ``LATEST`` as they were.

A run whose student FSDP shards saves the same layout: the full weights, gathered on save by
:mod:`reopold_agent.sharded_state` (so the folder loads with ``from_pretrained``), and the full
optimizer state keyed by parameter name (``optimizer.pt`` says so in its ``layout`` entry);
it resumes with the same sharding strategy.

Loading follows ``LATEST`` and falls back to the newest folder carrying ``COMPLETE``. Resuming
(:func:`load_newest_loadable`) reads a checkpoint whole and checks it against the student and
optimizer before changing either, so a checkpoint that is complete but unreadable (a truncated
file, another student's shapes) leaves the run untouched and an older one is tried.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .sharded_state import (OPTIMIZER_LAYOUT, check_full_optimizer_state, is_sharded, load_full_optimizer_state,
                            load_full_weights)

from .lora import checkpoint_weights, load_checkpoint_weights

COMPLETE = "COMPLETE"


class CheckpointError(Exception):
    """A complete checkpoint that cannot be loaded; the message names the file and the reason."""

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        """The checkpoint folder that failed."""


@dataclass
class Restored:
    """What :func:`load_newest_loadable` restored."""

    path: Path
    """The checkpoint folder that loaded."""
    state: dict[str, Any]
    """Its ``state.pt`` (``step``, ``rng``, extras)."""
    unreadable: list[Path]
    """Newer complete checkpoints that failed to load (reported through ``log``)."""


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
                    scheduler: Any, extra: dict[str, Any], keep: int = 2, image_processor: Any = None,
                    weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None
                    ) -> Path:
    """Write checkpoint ``step`` atomically and point ``LATEST`` at it; keep the newest ``keep``.

    ``image_processor`` (vision-language students) is saved beside the tokenizer, so the
    checkpoint loads with its processor like any Hugging Face VL folder. ``weights`` and
    ``optimizer_state``: a sharded student's full weights and optimizer state, gathered by
    :mod:`reopold_agent.sharded_state`, saved instead of ``model``'s and ``optimizer``'s own.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:06d}_", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **({} if weights is None else {"state_dict": weights}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if image_processor is not None:
            image_processor.save_pretrained(tmp)
        layout = {} if optimizer_state is None else {"layout": OPTIMIZER_LAYOUT}
        _save_torch({"optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                     "scheduler": scheduler.state_dict(), **layout}, tmp / "optimizer.pt")
        _save_torch({"step": step, "rng": rng_state(), **extra}, tmp / "state.pt")
        (tmp / COMPLETE).write_text(str(step))
        _fsync_tree(tmp)
    except BaseException:  # a full disk, or an interrupt: the half-written folder goes, nothing else
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


class _RecordingWriter:
    """File object for ``torch.save`` that keeps the OSError of a failed write: torch reports
    a failed write (a full disk) as a RuntimeError of its own, losing the errno."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.fh.write(view):]
        except OSError as exc:
            self.error = exc
            raise
        return len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes

    def flush(self) -> None:
        self.fh.flush()


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` that raises the file system's OSError (ENOSPC, EROFS) when a write fails."""
    with open(path, "wb", buffering=0) as fh:
        writer = _RecordingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, newest first (the one ``LATEST`` names leads)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = sorted((p for p in root.glob("step_*") if (p / COMPLETE).exists()), reverse=True)
    latest = latest_checkpoint(run_dir)
    return [latest, *(p for p in found if p != latest)] if latest is not None else found


def load_newest_loadable(run_dir: str | Path, *, model: Any, optimizer: Any, scheduler: Any,
                         log: Callable[[str], None] = print) -> Restored | None:
    """Restore the newest complete checkpoint that loads; None when the run has none.

    A checkpoint that fails (:func:`load_checkpoint`) is reported through ``log`` and the next
    older one is tried; the model and optimizer are changed only by the one that loads.

    Raises:
        CheckpointError: there are complete checkpoints and none loads; names the newest one's
            failing file.
    """
    failures: list[CheckpointError] = []
    for ckpt in complete_checkpoints(run_dir):
        try:
            state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        except CheckpointError as exc:
            failures.append(exc)
            log(f"cannot load checkpoint {exc}")
            continue
        if failures:
            log(f"falling back to the older checkpoint {ckpt}")
        return Restored(ckpt, state, [f.checkpoint for f in failures])
    if failures:
        more = f" (and {len(failures) - 1} older checkpoints fail too)" if len(failures) > 1 else ""
        raise CheckpointError(f"{failures[0]}{more}", failures[0].checkpoint)
    return None


def load_checkpoint(checkpoint: Path, *, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore model weights, optimizer, scheduler and RNG state from ``checkpoint``.

    Everything is read and checked against ``model`` and ``optimizer`` first (tensor names and
    shapes, parameter groups and their state shapes); only then is anything changed. A sharded
    ``model`` (FSDP) loads the full tensors into its shards: every process calls this at once.

    Returns:
        The saved ``state.pt`` dict (``step``, ``rng``, extras).

    Raises:
        CheckpointError: a file is missing, truncated or unreadable, or holds another model's
            shapes; the message starts with the file's path.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    unreadable = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, AttributeError,
                  pickle.UnpicklingError, SafetensorError)
    shards = sorted(checkpoint.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{checkpoint}: no *.safetensors weights", checkpoint)
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            weights.update(load_file(str(shard)))
        except unreadable as exc:
            raise CheckpointError(f"{shard}: {_reason(exc)}", checkpoint) from None
    _check_weights(checkpoint, weights, model)
    saved: dict[str, dict[str, Any]] = {}
    for name in ("optimizer.pt", "state.pt"):
        try:
            saved[name] = torch.load(checkpoint / name, map_location="cpu", weights_only=False)
            if not isinstance(saved[name], dict):
                raise ValueError(f"holds a {type(saved[name]).__name__}, not a dict")
        except unreadable as exc:
            raise CheckpointError(f"{checkpoint / name}: {_reason(exc)}", checkpoint) from None
    opt, state = saved["optimizer.pt"], saved["state.pt"]
    if not {"optimizer", "scheduler"} <= opt.keys() or not {"step", "rng"} <= state.keys():
        raise CheckpointError(f"{checkpoint}: optimizer.pt or state.pt lacks its entries", checkpoint)
    sharded = is_sharded(model)
    if sharded != (opt.get("layout") == OPTIMIZER_LAYOUT):
        saved_by, resumed_by = ("a sharded", "an unsharded") if not sharded else ("an unsharded", "a sharded")
        raise CheckpointError(f"{checkpoint}: saved by {saved_by} run, resumed by {resumed_by} one: resume with the "
                              "accelerate config (FSDP or not) the run was saved with", checkpoint)
    if sharded:
        reason = check_full_optimizer_state(opt["optimizer"], model)
        if reason is not None:
            raise CheckpointError(f"{checkpoint / 'optimizer.pt'}: {reason}", checkpoint)
        load_full_weights(model, weights)
        load_full_optimizer_state(model, optimizer, opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        set_rng_state(state["rng"])
        return state
    _check_optimizer(checkpoint / "optimizer.pt", opt["optimizer"], optimizer)
    load_checkpoint_weights(model, weights)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.tie_weights()
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    set_rng_state(state["rng"])
    return state


def set_aside(checkpoint: Path) -> Path:
    """Rename an unreadable checkpoint to ``unreadable_<name>`` beside it: kept for inspection,
    never loaded, pruned or overwritten again. Returns the new path."""
    target = checkpoint.with_name(f"unreadable_{checkpoint.name}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(checkpoint, target)
    return target


def _check_weights(checkpoint: Path, weights: dict[str, torch.Tensor], model: Any) -> None:
    """Same tensor names (a tied ``lm_head`` may be absent) and shapes as ``model`` (as a
    LoRA student's checkpoint holds them: its adapter's alone)."""
    own = checkpoint_weights(model)
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(k for k in set(own) - set(weights) if "lm_head" not in k)
    if unexpected or missing:
        raise CheckpointError(f"{checkpoint}: does not match the student (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}): a checkpoint of another model?", checkpoint)
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{checkpoint}: {name} has shape {tuple(tensor.shape)} in the checkpoint but "
                                  f"{tuple(own[name].shape)} in the student: a checkpoint of another model?",
                                  checkpoint)


def _check_optimizer(path: Path, saved: Any, optimizer: Any) -> None:
    """Saved optimizer state fits ``optimizer``: groups, parameter counts, state shapes."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{path}: no optimizer state", path.parent)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sizes = [len(g.get("params", ())) for g in groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: parameter groups of sizes {sizes} do not fit this student's optimizer",
                              path.parent)
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(f"{path}: state for parameter {index!r}, which this optimizer does not have",
                                  path.parent)
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(f"{path}: {key} of parameter {index} has shape {tuple(value.shape)}, "
                                      f"the parameter {tuple(params[index].shape)}", path.parent)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
