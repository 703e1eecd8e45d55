"""Declared ranges of numeric configuration fields, checked when a config dataclass is built.

A field states its allowed values where it is declared::

    grad_clip: float = ranged(1.0, ge=0)

and the class's ``__post_init__`` calls :func:`check_ranges`, which raises :class:`FieldError`
naming the field (``grad_clip must be >= 0, got -1.0``); :func:`reopold_agent.config_loading.from_dict`
puts the section in front (``train.grad_clip must be >= 0, got -1.0``). Every ``float`` value
must also be finite, ranged or not: NaN and infinity pass every comparison-based check the wrong
way round. ``None`` always passes (a field typed ``X | None`` accepts null).

Standard library only, so that the CLI can validate a configuration before heavy imports.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any


class FieldError(ValueError):
    """A config field holds a value outside its range; ``field`` is its name in the dataclass."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        """Name of the offending field, relative to the dataclass that declares it."""
        self.reason = reason
        """What is wrong, e.g. ``must be >= 1, got 0``."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field (``None``: unbounded on that side)."""

    ge: float | None = None
    """Smallest allowed value (inclusive)."""
    gt: float | None = None
    """Values must be strictly above this."""
    le: float | None = None
    """Largest allowed value (inclusive)."""
    lt: float | None = None
    """Values must be strictly below this."""

    def describe(self) -> str:
        """``>= 1``, ``in (0, 1]``, ``> 0`` ..."""
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}"
               if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})"
                if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "finite"

    def contains(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with ``default`` whose values must lie in the given bounds."""
    return dataclasses.field(default=default, metadata={"range": Range(ge=ge, gt=gt, le=le, lt=lt)})


def field_range(field: dataclasses.Field) -> Range | None:
    """The :class:`Range` declared on ``field`` with :func:`ranged`, else None."""
    return field.metadata.get("range")


def check_ranges(config: Any) -> None:
    """Check every field of dataclass instance ``config`` against its declared range.

    Raises:
        FieldError: the first field whose value is a non-finite float or outside its range.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        bounds = field_range(field)
        null = " or null" if "None" in str(field.type) else ""
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(field.name, f"must be a finite number{_suffix(bounds)}{null}, got {value!r}")
        if bounds is not None and not bounds.contains(value):
            raise FieldError(field.name, f"must be {bounds.describe()}{null}, got {value!r}")


def _suffix(bounds: Range | None) -> str:
    text = bounds.describe() if bounds is not None else "finite"
    return "" if text == "finite" else f" {text}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
