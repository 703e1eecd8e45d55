"""Lazy index of a run directory (or one trajectory file) for replay, export and plots.

Opening a run reads ``config.yaml`` and lists ``trajectories/*.jsonl``; nothing else. A file is
indexed when first needed: its line offsets are found by scanning bytes for newlines and each
line's scalar fields (step, task, reward, truncated, tool counts, token count) are read with a
regular expression over the bytes, so the per-token lists are never decoded for the list view.
A trajectory is parsed in full (:func:`reopold_agent.trajectory_io.trajectory_from_json`) only
when it is opened.

A file that grows (a run still being written) is re-scanned from where the last complete line
ended; a last line without its newline is indexed but marked incomplete, and opening it reports
it the way :func:`~reopold_agent.trajectory_io.iter_trajectories` does. Lines that cannot be read
become :class:`~reopold_agent.trajectory_io.LineError` records (``file:line: reason``) collected
in :attr:`RunIndex.errors`; they are skipped, never raised.

Departure: a line whose scalar fields look right but whose token lists are corrupt is listed,
and reported when it is opened (the fast index never decodes the token lists).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..objectives.config import ReopoldConfig
from ..trajectory import Trajectory
from ..trajectory_io import LineError, iter_trajectories, trajectory_from_json
from .teacher_kl import trajectory_kl

_STR = rb'"((?:[^"\\]|\\.)*)"'
_SCALARS = re.compile(
    rb',"reward":([^,]+),"truncated":(true|false),"end_reason":' + _STR
    + rb',"tool_errors":(-?\d+),"tool_calls":(-?\d+),"task":' + _STR + rb',"prompt_id":' + _STR
    + rb',"sample_index":(-?\d+),"step":(-?\d+),"teacher_logprobs":(.)')
_FILE_NAME = re.compile(r"^(step|eval|eval_teacher)_(\d+)\.jsonl$")
_KIND_OF_PREFIX = {"step": "step", "eval": "eval", "eval_teacher": "teacher"}
EVALUATION_KINDS = ("eval", "teacher")
"""Kinds of files whose episodes were never trained on: no REOPOLD phase or selection."""
_KIND_ORDER = {"step": 0, "eval": 1, "teacher": 2}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RunInfo:
    """What replay needs from a run's ``config.yaml`` (all optional)."""

    root: Path | None
    """Run directory, or None for a trajectory file outside a run."""
    config: dict[str, Any]
    """The resolved configuration as written by the trainer ({} when absent)."""

    @property
    def objective(self) -> str | None:
        """Objective name (``reopold``, ``rkl``, ...), or None when unknown."""
        return (self.config.get("objective") or {}).get("name")

    @property
    def student(self) -> str | None:
        """``model.student`` as written in the config."""
        return (self.config.get("model") or {}).get("student")

    @property
    def total_steps(self) -> int | None:
        """``train.steps``."""
        return (self.config.get("train") or {}).get("steps")

    @property
    def reopold(self) -> ReopoldConfig | None:
        """REOPOLD settings with the resolved switch step; None for other objectives."""
        if self.objective not in (None, "reopold") or not self.config:
            return None
        obj = self.config.get("objective") or {}
        raw = dict(obj.get("reopold") or {})
        fraction, steps = obj.get("switch_fraction"), self.total_steps
        if fraction is not None and steps is not None:
            raw["switch_step"] = int(round(float(fraction) * int(steps)))
        known = {k: raw[k] for k in ("lam", "beta", "switch_step", "ratio_clip") if k in raw}
        try:
            return ReopoldConfig(**known)
        except (TypeError, ValueError):
            return None

    @property
    def floor(self) -> float | None:
        """Reward floor c = log(lam) / (1 - lam), or None without REOPOLD settings."""
        cfg = self.reopold
        return None if cfg is None else cfg.floor

    def phase(self, step: int) -> str | None:
        """``exploration`` or ``refinement`` for training step ``step``; None if not REOPOLD."""
        cfg = self.reopold
        if cfg is None or step < 0:
            return None
        return "refinement" if cfg.is_refinement(step) else "exploration"


@dataclass
class Summary:
    """One line of a trajectory file: where it is and its scalar fields (no token lists)."""

    path: Path
    """File holding the line."""
    kind: str
    """``step`` (training episodes), ``eval`` (the student's evaluations), ``teacher`` (the
    teacher's evaluation, ``eval_teacher_<k>.jsonl``) or ``file`` (a file outside a run)."""
    line: int
    """1-based line number."""
    offset: int
    """Byte offset of the line in the file."""
    length: int
    """Byte length of the line (without its newline)."""
    complete: bool = True
    """False for a last line without newline (the file may still be being written)."""
    step: int | None = None
    """Training step of the episode (from the file name until the line is read)."""
    task: str = ""
    """Task name."""
    prompt_id: str = ""
    """Task item id."""
    sample_index: int = 0
    """Index g among the rollouts of the prompt."""
    reward: float | None = None
    """Outcome reward."""
    truncated: bool | None = None
    """Whether the episode ended without a final answer."""
    end_reason: str = ""
    """Why the episode ended."""
    tool_calls: int = 0
    """Tool calls made."""
    tool_errors: int = 0
    """Malformed or failed tool calls."""
    num_tokens: int | None = None
    """T, the episode's token count."""
    scored: bool | None = None
    """Whether the line has teacher log-probs."""
    error: str | None = None
    """Why the line could not be read (it is then skipped by filters)."""
    kl: float | None = None
    """Teacher-student KL estimate, filled by :meth:`RunIndex.ensure_kl`."""
    kl_done: bool = False
    """Whether ``kl`` was computed (it stays None for unscored episodes)."""

    @property
    def label(self) -> str:
        """``step_000003.jsonl:5``."""
        return f"{self.path.name}:{self.line}"

    @property
    def evaluation(self) -> bool:
        """Whether the episode is an evaluation's (student or teacher), never trained on."""
        return self.kind in EVALUATION_KINDS


@dataclass
class TrajectoryFile:
    """One JSONL file of a run, indexed on demand."""

    path: Path
    """The ``.jsonl`` file."""
    kind: str
    """``step``, ``eval``, ``teacher`` or ``file`` (see :attr:`Summary.kind`)."""
    step: int | None
    """Step in the file name (``step_000012.jsonl`` -> 12), else None."""
    summaries: list[Summary] = field(default_factory=list)
    """Lines indexed so far."""
    scanned: int = 0
    """Bytes covered by complete lines so far."""
    next_line: int = 1
    """Line number of the first line not yet indexed as complete."""


def open_run(path: str | Path) -> "RunIndex":
    """Open a run directory, its ``trajectories/`` folder or a single ``.jsonl`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no trajectory files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        root = _run_root_of(path.parent)
        kind = _kind_of(path) if root is not None else ("file", None)
        info = RunInfo(root, _read_config(root))
        return RunIndex(info, [TrajectoryFile(path, *kind)])
    root = path if (path / "trajectories").is_dir() or (path / "config.yaml").exists() else None
    if root is None and path.name == "trajectories":
        root = path.parent
    index = RunIndex(RunInfo(root, _read_config(root)), [], folder=path)
    index.refresh()
    if not index.files:
        where = path / "trajectories" if (path / "trajectories").is_dir() else path
        raise ValueError(f"no trajectory files (*.jsonl) in {where}")
    return index


class RunIndex:
    """The trajectory files of a run with lazily built summaries.

    Args:
        info: the run's configuration.
        files: files to start with.
        folder: directory re-listed by :meth:`refresh` (None for a single file).
    """

    def __init__(self, info: RunInfo, files: list[TrajectoryFile], *,
                 folder: Path | None = None) -> None:
        self.info = info
        self.files = files
        self.folder = folder
        self.errors: list[LineError] = []
        self._error_keys: set[tuple[str, int]] = set()
        self._lock = threading.RLock()  # the UI indexes in a thread while the user browses

    def refresh(self) -> int:
        """Add files that appeared since the last call; returns how many were added."""
        with self._lock:
            return self._refresh() if self.folder is not None else 0

    def _refresh(self) -> int:
        folder = self.folder / "trajectories" if (self.folder / "trajectories").is_dir() else self.folder
        known = {f.path for f in self.files}
        new = [p for p in sorted(folder.glob("*.jsonl")) if p not in known]
        self.files.extend(TrajectoryFile(p, *_kind_of(p)) for p in new)
        self.files.sort(key=_file_order)
        return len(new)

    def file_summaries(self, tf: TrajectoryFile) -> list[Summary]:
        """Summaries of ``tf``, scanning whatever was appended since the last call."""
        with self._lock:
            return self._scan(tf)

    def _scan(self, tf: TrajectoryFile) -> list[Summary]:
        size = tf.path.stat().st_size if tf.path.exists() else 0
        if size < tf.scanned:  # rewritten (e.g. a resumed run): index it again
            self._forget(tf.path, None)
            tf.summaries, tf.scanned, tf.next_line = [], 0, 1
        if size <= tf.scanned and (not tf.summaries or tf.summaries[-1].complete):
            return tf.summaries
        if tf.summaries and not tf.summaries[-1].complete:
            self._forget(tf.path, tf.summaries.pop().line)
        with open(tf.path, "rb") as fh:
            for offset, raw, complete in _scan_lines(fh, tf.scanned):
                if complete:
                    tf.scanned = offset + len(raw) + 1
                if raw.strip():
                    tf.summaries.append(self._summarise(tf, tf.next_line, offset, raw, complete))
                if complete:
                    tf.next_line += 1
        return tf.summaries

    def summaries(self) -> list[Summary]:
        """Summaries of every file (indexes all files; prefer :meth:`file_summaries`)."""
        return [s for tf in self.files for s in self.file_summaries(tf)]

    def load(self, summary: Summary) -> Trajectory | LineError:
        """Parse the line of ``summary`` in full; a failure is recorded and returned."""
        with open(summary.path, "rb") as fh:
            fh.seek(summary.offset)
            raw = fh.read(summary.length)
        try:
            return trajectory_from_json(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            cut = "" if summary.complete else " (last line cut short: file still being written?)"
            summary.error = f"{exc}{cut}"
            return self._record(LineError(str(summary.path), summary.line, summary.error))

    def load_file(self, path: Path) -> list[Trajectory]:
        """Every readable trajectory of one file (via ``iter_trajectories``)."""
        out = []
        for item in iter_trajectories(path):
            if isinstance(item, LineError):
                self._record(item)
            else:
                out.append(item)
        return out

    def file_of(self, summary: Summary) -> TrajectoryFile | None:
        return next((tf for tf in self.files if tf.path == summary.path), None)

    def ensure_kl(self, summaries: list[Summary]) -> None:
        """Fill ``kl`` of each summary (parses those trajectories once)."""
        for s in summaries:
            if not s.kl_done and s.error is None:
                traj = self.load(s)
                s.kl = None if isinstance(traj, LineError) else trajectory_kl(traj)
                s.kl_done = True

    def _summarise(self, tf: TrajectoryFile, line: int, offset: int, raw: bytes,
                   complete: bool) -> Summary:
        s = Summary(tf.path, tf.kind, line, offset, len(raw), complete, step=tf.step)
        body = raw.strip()
        match = _SCALARS.search(body) if body.startswith(b"{") and body.endswith(b"}") else None
        if match is None:
            traj = self.load(s)
            if not isinstance(traj, LineError):
                _fill_from_trajectory(s, traj)
            return s
        try:
            _fill_from_match(s, match, body)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            s.error = f"unreadable scalar fields ({exc})"
            self._record(LineError(str(s.path), line, s.error))
        return s

    def _forget(self, path: Path, line: int | None) -> None:
        """Drop recorded errors of ``path`` (one line, or all) that a re-scan supersedes."""
        stale = {(e.path, e.line) for e in self.errors
                 if e.path == str(path) and (line is None or e.line == line)}
        self.errors = [e for e in self.errors if (e.path, e.line) not in stale]
        self._error_keys -= stale

    def _record(self, err: LineError) -> LineError:
        key = (err.path, err.line)
        if key not in self._error_keys:
            self._error_keys.add(key)
            self.errors.append(err)
        return err


def _scan_lines(fh, start: int):
    """Yield (offset, bytes without newline, complete) for each line from byte ``start``."""
    fh.seek(start)
    offset, pending = start, b""
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            break
        pending += chunk
        pos = 0
        while (nl := pending.find(b"\n", pos)) != -1:
            yield offset, pending[pos:nl], True
            offset += nl - pos + 1
            pos = nl + 1
        pending = pending[pos:]
    if pending:
        yield offset, pending, False


def _fill_from_match(s: Summary, m: re.Match, body: bytes) -> None:
    reward = json.loads(m.group(1))
    if not isinstance(reward, (int, float)) or isinstance(reward, bool):
        raise ValueError(f"field 'reward': expected a number, got {m.group(1)[:40].decode(errors='replace')}")
    s.reward = float(reward)
    s.truncated = m.group(2) == b"true"
    s.end_reason = json.loads(b'"' + m.group(3) + b'"')
    s.tool_errors, s.tool_calls = int(m.group(4)), int(m.group(5))
    s.task = json.loads(b'"' + m.group(6) + b'"')
    s.prompt_id = json.loads(b'"' + m.group(7) + b'"')
    s.sample_index, s.step = int(m.group(8)), int(m.group(9))
    s.scored = m.group(10) != b"n"
    start = body.find(b"[", body.find(b'"token_ids"'))
    end = body.find(b"]", start)
    if 0 <= start < end:
        inner = body[start + 1:end]
        s.num_tokens = inner.count(b",") + 1 if inner.strip() else 0


def _fill_from_trajectory(s: Summary, traj: Trajectory) -> None:
    s.reward, s.truncated, s.end_reason = traj.reward, traj.truncated, traj.end_reason
    s.tool_calls, s.tool_errors, s.task = traj.tool_calls, traj.tool_errors, traj.task
    s.prompt_id, s.sample_index, s.step = traj.prompt_id, traj.sample_index, traj.step
    s.num_tokens, s.scored = traj.num_tokens, traj.teacher_logprobs is not None


def _kind_of(path: Path) -> tuple[str, int | None]:
    m = _FILE_NAME.match(path.name)
    return (_KIND_OF_PREFIX[m.group(1)], int(m.group(2))) if m else ("file", None)


def _file_order(tf: TrajectoryFile) -> tuple:
    """By step, then training before the student's and the teacher's evaluations."""
    return (tf.step if tf.step is not None else -1, _KIND_ORDER.get(tf.kind, 3), tf.path.name)


def _run_root_of(folder: Path) -> Path | None:
    """The run directory of a trajectory file's folder: ``trajectories/`` beside the run's
    ``config.yaml`` or its stored ``images/`` (so a single file still finds its images)."""
    if folder.name == "trajectories" and ((folder.parent / "config.yaml").exists()
                                          or (folder.parent / "images").is_dir()):
        return folder.parent
    return folder if (folder / "config.yaml").exists() else None


def _read_config(root: Path | None) -> dict[str, Any]:
    if root is None or not (root / "config.yaml").exists():
        return {}
    try:
        data = yaml.safe_load((root / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
