"""Checks of the built-in environments' constructor arguments.

Each raises :class:`~reopold_agent.config_ranges.FieldError` (a ``ValueError``) naming the
argument, which the CLI reports as ``task.env_kwargs.<name> ...``: a value that would make every
episode fail (``max_turn_chars: -1`` rejects every turn) stops the run before it starts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from reopold_agent.config_ranges import FieldError


def at_least(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise FieldError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def seconds(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` when it is a finite number of seconds > 0 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(float(value)) and value > 0):
        raise FieldError(name, f"must be a finite number of seconds > 0{' or null' if optional else ''}, "
                               f"got {value!r}")
    return float(value)


def choices(name: str, values: Iterable[object], allowed: tuple) -> tuple:
    """``values`` as a tuple when it is a non-empty selection from ``allowed``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise FieldError(name, f"must be a list of {list(allowed)}, got {values!r}")
    chosen = tuple(values)
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        what = f"unknown {unknown[0]!r}" if unknown else "none given"
        raise FieldError(name, f"must be a non-empty list of {list(allowed)} ({what})")
    return chosen
