"""JSON Lines storage of :class:`~reopold_agent.trajectory.Trajectory` records.

One episode per line, a JSON object whose keys are the dataclass fields (documented in
``docs/trajectory-format.md``). Floats are written with Python's shortest round-trip repr, so a
write/read cycle is exact; undefined per-token values are ``null``; non-finite floats are
written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so every line is strict
JSON that other tools can read.

Reading never stops at a bad line: :func:`read_trajectories` returns the records it could parse
plus a :class:`LineError` (path, line number, reason) for each line it skipped, so a corrupt
line or a run still being written (last line cut short) can still be opened. A line must be
JSON *and* hold every field with its type (:func:`check_field_types`): a valid-JSON line with
``"images": [1]`` or ``"reward": "high"`` is skipped with its reason, never handed on to crash
a reader further down.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trajectory import SCHEMA_VERSION, ImageRecord, TokenSource, Trajectory

_IN_MEMORY_ONLY = ("pixel_inputs",)
_FLOAT_LISTS = ("logprobs", "teacher_logprobs", "entropy", "trainer_logprobs")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class LineError:
    """A line of a trajectory file that could not be read."""

    path: str
    line: int
    """1-based line number."""
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def trajectory_to_json(traj: Trajectory) -> str:
    """Serialise one trajectory to a single line of strict JSON (no trailing newline)."""
    record = {f.name: getattr(traj, f.name) for f in dataclasses.fields(traj) if f.name not in _IN_MEMORY_ONLY}
    record["images"] = [dataclasses.asdict(image) for image in traj.images]
    for key in _FLOAT_LISTS:
        if record[key] is not None:
            record[key] = [_encode_float(v) for v in record[key]]
    return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default)


def trajectory_from_json(line: str) -> Trajectory:
    """Parse one line written by :func:`trajectory_to_json`.

    Raises:
        ValueError: the line is not JSON, misses required fields, or has a newer schema.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError("a trajectory line must be a JSON object")
    version = record.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r} is newer than this reader ({SCHEMA_VERSION})")
    check_field_types(record)
    for key in _FLOAT_LISTS:
        if record.get(key) is not None:
            record[key] = [_decode_float(v) for v in record[key]]
    record["images"] = [ImageRecord(**img) for img in record.get("images", [])]
    known = {f.name for f in dataclasses.fields(Trajectory)} - set(_IN_MEMORY_ONLY)
    unknown = set(record) - known
    if unknown:
        # Fields from a newer minor writer are kept visible rather than dropped silently.
        record.setdefault("info", {})["unknown_fields"] = {k: record.pop(k) for k in sorted(unknown)}
    try:
        return Trajectory(**record)
    except TypeError as exc:
        raise ValueError(f"missing or wrong fields: {exc}") from None


_SOURCES = frozenset(s.value for s in TokenSource)


def check_field_types(record: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of a trajectory record with the wrong type.

    Checks every field of the format (``docs/trajectory-format.md``) that is present; absent
    optional fields take their defaults, and missing required ones are reported by the
    dataclass. Per-token float lists hold numbers, ``null`` or the non-finite strings.
    """
    def fail(name: str, expected: str, value: Any) -> None:
        shown = json.dumps(value, default=str)
        raise ValueError(f"field {name!r}: expected {expected}, got {shown[:40]}{'...' if len(shown) > 40 else ''}")

    for name in ("token_ids", "turn", "loss_mask"):
        if name in record and not _is_list_of(record[name], _is_int):
            fail(name, "a list of integers", record[name])
    if "token_ids" in record and any(v < 0 for v in record["token_ids"]):
        fail("token_ids", "non-negative token ids", [v for v in record["token_ids"] if v < 0][:3])
    if "loss_mask" in record and any(v not in (0, 1) for v in record["loss_mask"]):
        fail("loss_mask", "a list of 0 and 1", record["loss_mask"])
    if "source" in record and not _is_list_of(record["source"], lambda v: v in _SOURCES):
        fail("source", f"a list of {'/'.join(sorted(_SOURCES))}", record["source"])
    for name in _FLOAT_LISTS:
        value = record.get(name)
        if value is not None and not _is_list_of(value, _is_float_entry):
            fail(name, "a list of numbers or null", value)
    if "logprobs" in record and record["logprobs"] is None:
        fail("logprobs", "a list of numbers or null", None)
    if "reward" in record and not _is_number(record["reward"]):
        fail("reward", "a number", record["reward"])
    for name in ("tool_errors", "tool_calls", "sample_index", "step", "schema_version"):
        if name in record and not _is_int(record[name]):
            fail(name, "an integer", record[name])
    for name in ("end_reason", "task", "prompt_id", "sampler"):
        if name in record and not isinstance(record[name], str):
            fail(name, "a string", record[name])
    if "truncated" in record and not isinstance(record["truncated"], bool):
        fail("truncated", "true or false", record["truncated"])
    if "info" in record and not isinstance(record["info"], dict):
        fail("info", "an object", record["info"])
    if "messages" in record and not _is_list_of(record["messages"], _is_message):
        fail("messages", "a list of {role: system/user/assistant/tool, content: text, null or [{type: text/image}]} "
                         "objects", record["messages"])
    if "images" in record and not _is_list_of(record["images"], _is_image):
        fail("images", 'a list of {"path": string, "token_start": int, "token_end": int} objects', record["images"])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_float_entry(value: Any) -> bool:
    return value is None or _is_number(value) or (isinstance(value, str) and value in _NONFINITE)


def _is_list_of(value: Any, check) -> bool:
    return isinstance(value, list) and all(check(v) for v in value)


_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _is_message(value: Any) -> bool:
    """A chat message: a known role, and text, null, or a list of typed parts (text, image)."""
    if not isinstance(value, dict) or value.get("role") not in _ROLES:
        return False
    content = value.get("content")
    return content is None or isinstance(content, str) or _is_list_of(
        content, lambda part: isinstance(part, dict) and part.get("type") in ("text", "image"))


def _is_image(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) - {"path", "token_start", "token_end", "grid_thw"}:
        return False
    grid = value.get("grid_thw")
    return (isinstance(value.get("path"), str) and _is_int(value.get("token_start"))
            and _is_int(value.get("token_end")) and (grid is None or _is_list_of(grid, _is_int)))


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory], *, append: bool = True) -> int:
    """Write trajectories to ``path`` (appending by default); returns how many were written.

    Each line is written whole and flushed, so a reader of a run in progress sees complete
    lines plus at most one partial last line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        for traj in trajectories:
            fh.write(trajectory_to_json(traj) + "\n")
            count += 1
        fh.flush()
        os.fsync(fh.fileno())
    return count


def iter_trajectories(path: str | Path) -> Iterator[Trajectory | LineError]:
    """Yield each line of ``path`` as a Trajectory, or a LineError for a line that fails."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield trajectory_from_json(line)
            except ValueError as exc:
                cut = "" if line.endswith("\n") else " (last line cut short: file still being written?)"
                yield LineError(str(path), number, f"{exc}{cut}")


def read_trajectories(path: str | Path) -> tuple[list[Trajectory], list[LineError]]:
    """Read every readable trajectory of ``path``; returns (trajectories, skipped lines)."""
    good: list[Trajectory] = []
    bad: list[LineError] = []
    for item in iter_trajectories(path):
        (bad if isinstance(item, LineError) else good).append(item)
    return good, bad


def _encode_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _decode_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _NONFINITE:
            raise ValueError(f"bad float value {value!r}")
        return _NONFINITE[value]
    return float(value)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "value"):  # enums
        return obj.value
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} in a trajectory")
