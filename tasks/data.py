"""Loading a user's task items from JSON Lines, and assigning generated items to splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np


class TaskDataError(ValueError):
    """A user data file is missing, unreadable or has a bad line."""


def read_jsonl(path: str | Path, required: dict[str, type | tuple[type, ...]]
               ) -> list[dict[str, Any]]:
    """Read one JSON object per non-blank line and check its required keys.

    Args:
        path: the ``.jsonl`` file.
        required: key -> accepted type(s) that every line must have.

    Returns:
        The objects in file order, each with ``"line"`` (1-based line number) added.

    Raises:
        TaskDataError: the file is missing or empty, or a line is not a JSON object with the
            required keys and types; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"data file {str(path)!r} does not exist")
    items = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise TaskDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key, types in required.items():
                if key not in obj:
                    raise TaskDataError(f"{where}: missing key {key!r} (required: "
                                        f"{', '.join(required)})")
                if not isinstance(obj[key], types) or isinstance(obj[key], bool):
                    raise TaskDataError(f"{where}: key {key!r} has type "
                                        f"{type(obj[key]).__name__}")
            items.append({**obj, "line": lineno})
    if not items:
        raise TaskDataError(f"data file {str(path)!r} has no items")
    return items


EVAL_FRACTION_BYTE = 32
"""Keys whose SHA-1 first byte is below this belong to the eval split (1/8 of all keys)."""


def split_of(key: str) -> str:
    """The split (``"train"`` or ``"eval"``) a generated item belongs to, from its text.

    Generators draw candidates and keep only those whose key (question text, scene
    description) hashes into their own split, so train and eval can never share an item,
    whatever seeds or sizes the two environments use.
    """
    first = hashlib.sha1(key.encode("utf-8")).digest()[0]
    return "eval" if first < EVAL_FRACTION_BYTE else "train"


def draw_for_split(
    split: str,
    seed: int,
    index: int,
    draw: Callable[[np.random.Generator], dict[str, Any]],
    key: Callable[[dict[str, Any]], str],
    max_attempts: int = 1_000,
) -> dict[str, Any]:
    """Item ``index`` of ``split``: the first candidate drawn whose key hashes into ``split``.

    Args:
        split: ``"train"`` or ``"eval"``.
        seed: dataset seed (non-negative); with ``split`` and ``index`` it fixes the item.
        index: item index within the split.
        draw: makes one candidate item from a generator.
        key: the text that identifies an item (see :func:`split_of`).
        max_attempts: candidates tried before giving up.

    Raises:
        RuntimeError: no candidate landed in ``split`` (the generator has too few items).
    """
    stream = {"train": 1, "eval": 2}[split]
    for attempt in range(max_attempts):
        item = draw(np.random.default_rng([seed, stream, index, attempt]))
        if split_of(key(item)) == split:
            return item
    raise RuntimeError(f"no {split} item found for index {index} in {max_attempts} draws")
