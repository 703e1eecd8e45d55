"""tool_math: arithmetic and word problems where a python tool pays off.

Items are generated from ``(seed, split, index)``; each has a ``question``, an integer
``answer`` (as a string), a ``difficulty`` (1: one large multiplication or sum, 2: multi-step
expression, 3: word problem) and the gold ``code`` that prints the answer. Train and eval are
disjoint by construction (:func:`reopold_agent.tasks.data.split_of` on the question text).
A user's JSON Lines file of ``{"question", "answer"}`` (optionally ``"code"`` that prints the
answer) can replace the generated items.

The gold trajectory is deliberately short and regular::

    assistant: <tool_call>
               {"name": "python", "arguments": {"code": "print(37*245)"}}
               </tool_call>
    tool:      9065
    assistant: \\boxed{9065}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from reopold_agent.tool_protocol import tool_call_message

from .answers import extract_boxed, numbers_equal
from .data import draw_for_split, read_jsonl
from .spec import Verdict

SYSTEM_PROMPT = (
    "Solve the problem. Use the python tool to calculate: call it, read its output, then "
    "reply with only the final answer in \\boxed{}."
)
LEVELS = (1, 2, 3)
Problem = tuple[str, str, int]
"""(question, python expression, value)."""


def _n(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _level1(rng: np.random.Generator) -> Problem:
    if rng.random() < 0.5:
        a, b = _n(rng, 100, 999), _n(rng, 1000, 9999)
        return f"Compute {a} * {b}.", f"{a}*{b}", a * b
    a, b, c = _n(rng, 10000, 99999), _n(rng, 1000, 9999), _n(rng, 10000, 99999)
    return f"Compute {a} + {b} + {c}.", f"{a}+{b}+{c}", a + b + c


def _level2(rng: np.random.Generator) -> Problem:
    kind = _n(rng, 0, 2)
    if kind == 0:
        a, b, c, d = _n(rng, 11, 99), _n(rng, 101, 999), _n(rng, 11, 99), _n(rng, 101, 999)
        return f"Compute {a} * {b} + {c} * {d}.", f"{a}*{b} + {c}*{d}", a * b + c * d
    if kind == 1:
        a, b, c = _n(rng, 2000, 9999), _n(rng, 100, 1999), _n(rng, 12, 99)
        return f"Compute ({a} - {b}) * {c}.", f"({a} - {b})*{c}", (a - b) * c
    q, d, e = _n(rng, 1000, 9999), _n(rng, 12, 99), _n(rng, 100, 999)
    return f"Compute {q * d} / {d} - {e}.", f"{q * d}//{d} - {e}", q - e


def _level3(rng: np.random.Generator) -> Problem:
    kind = _n(rng, 0, 3)
    a, b, c, d = _n(rng, 12, 99), _n(rng, 101, 499), _n(rng, 12, 99), _n(rng, 101, 499)
    if kind == 0:
        return (f"A shop sells {a} boxes of {b} pens and {c} boxes of {d} pencils. How many "
                "pens and pencils does it sell in total?", f"{a}*{b} + {c}*{d}", a * b + c * d)
    if kind == 1:
        return (f"A train travels at {b} km per hour for {a} hours, then at {d} km per hour "
                f"for {c} hours. How many kilometres does it travel?",
                f"{b}*{a} + {d}*{c}", b * a + d * c)
    if kind == 2:
        broken = _n(rng, 10, a * b - 1)
        return (f"A school has {a} classrooms with {b} chairs each. {broken} chairs are "
                "broken. How many chairs are not broken?", f"{a}*{b} - {broken}",
                a * b - broken)
    crates = _n(rng, 100, 999)
    return (f"A factory fills {crates * a} bottles into crates of {a} bottles each and sells "
            f"each crate for {b} dollars. How many dollars does it earn?",
            f"{crates * a}//{a}*{b}", crates * b)


_GENERATORS: dict[int, Callable[[np.random.Generator], Problem]] = {
    1: _level1, 2: _level2, 3: _level3,
}


def make_item(split: str, index: int, *, seed: int = 0,
              levels: tuple[int, ...] = LEVELS) -> dict[str, Any]:
    """Generated item ``index`` of ``split``.

    Args:
        split: ``"train"`` or ``"eval"``.
        index: any non-negative int.
        seed: dataset seed; the same ``(seed, split, index, levels)`` gives the same item.
        levels: difficulties to draw from (uniformly).

    Returns:
        ``{"question", "answer", "difficulty", "code"}``.
    """
    bad = [lv for lv in levels if lv not in _GENERATORS]
    if not levels or bad:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")

    def draw(rng: np.random.Generator) -> dict[str, Any]:
        level = levels[int(rng.integers(len(levels)))]
        question, expr, value = _GENERATORS[level](rng)
        return {"question": question, "answer": str(value), "difficulty": level,
                "code": f"print({expr})"}

    return draw_for_split(split, seed, index, draw, key=lambda item: item["question"])


def load_items(path: str | Path) -> list[dict[str, Any]]:
    """Items from a user's JSON Lines file of ``{"question", "answer", "code"?}``.

    Raises:
        TaskDataError: a missing file or a bad line (the message names the line).
    """
    rows = read_jsonl(path, {"question": str, "answer": (str, int, float)})
    return [item_from_dict(row) for row in rows]


def item_from_dict(row: dict[str, Any]) -> dict[str, Any]:
    """Normalise a caller-supplied item (answer as a string, optional gold code)."""
    if not isinstance(row.get("question"), str):
        raise ValueError(f'a tool_math item needs a "question" string, got keys {sorted(row)}')
    return {**row, "answer": str(row["answer"]), "difficulty": row.get("difficulty"),
            "code": row.get("code")}


def prompt_messages(item: dict[str, Any]) -> list[dict[str, Any]]:
    """System and user messages opening an episode."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": item["question"]}]


def verify(item: dict[str, Any], text: str) -> Verdict:
    """1.0 when the last ``\\boxed{}`` of ``text`` equals the answer numerically, else 0.0."""
    boxed = extract_boxed(text)
    if boxed is None:
        return Verdict(0.0, None, "no \\boxed{} answer")
    ok = numbers_equal(boxed, item["answer"])
    return Verdict(1.0 if ok else 0.0, boxed, "correct" if ok else "wrong number")


def gold_turns(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The gold continuation: python call, its output, boxed answer.

    Items without ``code`` (user data) get the final answer only. A user's ``code`` must
    print exactly the answer, since the tool message is written without running it.
    """
    final = {"role": "assistant", "content": f"\\boxed{{{item['answer']}}}"}
    if not item.get("code"):
        return [final]
    return [tool_call_message("", [("python", {"code": item["code"]})]),
            {"role": "tool", "name": "python", "content": item["answer"]},
            final]
