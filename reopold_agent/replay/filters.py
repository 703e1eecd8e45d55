"""Filters and sort orders over trajectory summaries (shared by the TUI and the exports).

A filter is written as space-separated terms, all of which must hold::

    step=3  step=2..5  kind=eval  kind=teacher  task=tool_math  end=turn_limit
    reward=1  reward>0  reward<=0.5
    truncated  !truncated  truncated=no
    errors  !errors          (episodes with / without tool errors)
    scored  !scored          (with / without teacher scores)
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Callable

from .loading import Summary

SORT_KEYS = ("file", "kl", "reward", "tokens", "tool_errors", "step")
"""Sort orders of the trajectory list; ``kl`` needs :meth:`RunIndex.ensure_kl` first."""

_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
            "=": operator.eq}
_TERM = re.compile(r"^(!?)([a-z_]+)(?:(>=|<=|=|>|<)(.+))?$")
_FLAGS = {"truncated": "truncated", "errors": "tool_errors", "scored": "scored"}
_YES, _NO = {"yes", "true", "1", "y"}, {"no", "false", "0", "n"}


@dataclass
class TrajectoryFilter:
    """A conjunction of predicates over :class:`~reopold_agent.replay.loading.Summary`."""

    text: str = ""
    """The expression it was parsed from."""
    predicates: list[Callable[[Summary], bool]] = field(default_factory=list)

    def __call__(self, summary: Summary) -> bool:
        if summary.error is not None:
            return False
        return all(p(summary) for p in self.predicates)

    def steps(self) -> tuple[int, int] | None:
        """(lo, hi) step range named by a ``step=`` term, to skip whole files; else None."""
        m = re.search(r"(?:^|\s)step=(-?\d+)(?:\.\.(-?\d+))?(?:\s|$)", self.text)
        if m is None:
            return None
        lo = int(m.group(1))
        return lo, int(m.group(2)) if m.group(2) is not None else lo


def parse_filter(text: str) -> TrajectoryFilter:
    """Parse a filter expression (see the module docstring).

    Raises:
        ValueError: a term is not understood; the message names it and the valid forms.
    """
    preds = [_parse_term(term) for term in text.split()]
    return TrajectoryFilter(text.strip(), preds)


def sort_summaries(summaries: list[Summary], key: str, *, reverse: bool = False) -> list[Summary]:
    """Sort by one of :data:`SORT_KEYS`; missing values (e.g. unscored KL) always go last."""
    if key == "file":
        return list(reversed(summaries)) if reverse else list(summaries)
    attr = {"tokens": "num_tokens"}.get(key, key)
    present = [s for s in summaries if getattr(s, attr) is not None]
    missing = [s for s in summaries if getattr(s, attr) is None]
    return sorted(present, key=lambda s: getattr(s, attr), reverse=reverse) + missing


def _parse_term(term: str) -> Callable[[Summary], bool]:
    m = _TERM.match(term)
    if m is None:
        raise ValueError(f"filter term {term!r} not understood; use e.g. step=3, step=2..5, "
                         "reward>0, task=NAME, kind=eval, end=REASON, truncated, !errors")
    neg, name, op, value = m.groups()
    if name in _FLAGS:
        return _flag(name, neg, op, value, term)
    if neg:
        raise ValueError(f"filter term {term!r}: '!' only applies to truncated, errors, scored")
    if op is None:
        raise ValueError(f"filter term {term!r} needs a value, e.g. {name}=...")
    if name == "step":
        return _step_term(op, value, term)
    if name == "reward":
        number = _number(value, term)
        return lambda s: s.reward is not None and _COMPARE[op](s.reward, number)
    if name in ("task", "kind", "end") and op == "=":
        attr = {"end": "end_reason"}.get(name, name)
        return lambda s: getattr(s, attr) == value
    raise ValueError(f"filter term {term!r} not understood; known names: step, reward, task, "
                     "kind, end, truncated, errors, scored")


def _flag(name: str, neg: str, op: str | None, value: str | None, term: str):
    want = not neg
    if op is not None:
        if op != "=" or value.lower() not in _YES | _NO:
            raise ValueError(f"filter term {term!r}: use {name}, !{name} or {name}=yes|no")
        want = (value.lower() in _YES) != bool(neg)
    attr = _FLAGS[name]
    return lambda s: bool(getattr(s, attr)) == want


def _step_term(op: str, value: str, term: str):
    if op == "=" and ".." in value:
        lo, _, hi = value.partition("..")
        a, b = int(_number(lo, term)), int(_number(hi, term))
        return lambda s: s.step is not None and a <= s.step <= b
    number = _number(value, term)
    return lambda s: s.step is not None and _COMPARE[op](s.step, number)


def _number(text: str, term: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"filter term {term!r}: {text!r} is not a number") from None
