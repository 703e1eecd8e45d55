"""code: write a small Python function; hidden unit tests run in the sandbox decide the reward.

An item is a template from :mod:`reopold_agent.tasks.code_problems` with drawn parameters and
hidden test inputs. The final answer is the last fenced ```python block of the final turn.
Reward: 1.0 if every hidden test passes, else 0.0 (partial credit is reported in the verdict
detail, not paid, so that a half-right function is not a local optimum).

How tests run: the program sent to the sandbox is a prelude (reads a one-time marker from
stdin), the model's code, then a harness that calls the function on each input and prints the
canonicalised outputs on a line starting with the marker. Expected outputs never enter the
sandbox; they are compared here. Outputs are canonicalised to JSON (tuples as lists, floats
rounded to 6 places; other types count as failures). A model that prints more than the
sandbox's output limit, or never returns, scores 0.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import numpy as np

from reopold_agent.sandbox.base import Sandbox
from reopold_agent.tool_protocol import tool_call_message

from .answers import extract_code_block
from .code_problems import TEMPLATES, CodeTemplate
from .data import draw_for_split
from .spec import Verdict

SYSTEM_PROMPT = (
    "Write the requested Python function. You may test code with the python tool. Give the "
    "final answer as one ```python code block containing the function."
)
TEST_TIMEOUT_S = 10.0

_CANON_SOURCE = '''
def _canon(x):
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is float:
        return round(x, 6)
    if type(x) in (list, tuple):
        return [_canon(v) for v in x]
    raise TypeError("unsupported return type " + type(x).__name__)
'''
_PRELUDE = '''import os as _os, sys as _sys
_MARK = _sys.stdin.readline().strip()
def _emit(text, _w=_os.write, _m=_MARK):
    _w(1, ("\\n" + _m + text + "\\n").encode())
del _MARK
'''
_HARNESS = '''
import json as _json
_outs = []
for _args in _json.loads({cases!r}):
    try:
        _outs.append(["ok", _canon({fn}(*_args))])
    except BaseException as _e:
        _outs.append(["error", type(_e).__name__])
_emit(_json.dumps(_outs))
'''


def _run_trusted(source: str, fn: str, cases: list[list[Any]]) -> list[Any]:
    """Canonical outputs of one of our own reference solutions, computed in-process."""
    namespace: dict[str, Any] = {}
    exec(_CANON_SOURCE + "\n" + source, namespace)  # noqa: S102 - our templates only
    return [["ok", namespace["_canon"](namespace[fn](*json.loads(json.dumps(args))))]
            for args in cases]


def build_item(template: CodeTemplate, params: dict[str, Any], rng: np.random.Generator
               ) -> dict[str, Any]:
    """An item from one template with the given parameters; test inputs drawn from ``rng``."""
    solution = template.fill(template.solution, params)
    cases = [list(args) for args in template.inputs(rng)]
    expected = _run_trusted(solution, template.key, cases)
    printable = [i for i, (_, v) in enumerate(expected) if str(v) and str(v) == str(v).rstrip()]
    pick = printable[-1] if printable else 0  # the last cases are the typical ones
    example_call = f"{template.key}({', '.join(repr(a) for a in cases[pick])})"
    prompt = (f"Write a Python function `{template.key}({template.signature})` that "
              f"{template.fill(template.text, params)}. Example: `{example_call}` returns "
              f"`{expected[pick][1]!r}`.")
    return {"problem": f"{template.key}:{json.dumps(params, sort_keys=True)}",
            "fn": template.key, "prompt": prompt, "answer": solution, "tests": cases,
            "expected": expected, "example_call": example_call,
            "example_output": str(expected[pick][1])}


def make_item(split: str, index: int, *, seed: int = 0) -> dict[str, Any]:
    """Generated item ``index`` of ``split``; splits never share a (template, params) problem.

    Returns:
        ``{"problem", "fn", "prompt", "answer" (reference solution), "tests", "expected",
        "example_call", "example_output"}``.
    """
    def draw(rng: np.random.Generator) -> dict[str, Any]:
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        return build_item(template, template.params(rng), rng)

    return draw_for_split(split, seed, index, draw, key=lambda item: item["problem"])


def prompt_messages(item: dict[str, Any]) -> list[dict[str, Any]]:
    """System and user messages opening an episode."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": item["prompt"]}]


def run_tests(item: dict[str, Any], code: str, sandbox: Sandbox,
              timeout_s: float = TEST_TIMEOUT_S) -> tuple[int, str]:
    """Run ``code`` against the item's hidden tests.

    Args:
        item: a code item (``fn``, ``tests``, ``expected``).
        code: the model's code (defines the function).
        sandbox: where the program runs.
        timeout_s: wall-clock limit for the whole test run.

    Returns:
        ``(passed, detail)`` where ``passed`` counts matching outputs.
    """
    mark = "@@reopold-tests-" + secrets.token_hex(8) + "@@"
    program = (_PRELUDE + _CANON_SOURCE + "\n" + code + "\n"
               + _HARNESS.format(cases=json.dumps(item["tests"]), fn=item["fn"]))
    result = sandbox.run(program, stdin=mark + "\n", timeout_s=timeout_s)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(mark)]
    if not lines:
        why = result.limit.value if result.limit.value != "none" else "no test results"
        tail = result.stderr.strip().splitlines()[-1:] or [""]
        return 0, f"tests did not run ({why}) {tail[0]}".strip()
    try:
        outs = json.loads(lines[-1][len(mark):])
    except json.JSONDecodeError:
        return 0, "unreadable test results"
    passed = sum(1 for got, want in zip(outs, item["expected"]) if got == want)
    return passed, f"{passed}/{len(item['expected'])} tests passed"


def verify(item: dict[str, Any], text: str, sandbox: Sandbox,
           timeout_s: float = TEST_TIMEOUT_S) -> Verdict:
    """1.0 when the last ```python block of ``text`` passes every hidden test, else 0.0."""
    code = extract_code_block(text)
    if code is None:
        return Verdict(0.0, None, "no ```python code block")
    passed, detail = run_tests(item, code, sandbox, timeout_s)
    return Verdict(1.0 if passed == len(item["expected"]) else 0.0, code, detail)


def gold_turns(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The gold continuation: run the solution on the example, read the output, answer."""
    code = f"{item['answer']}\n\nprint({item['example_call']})"
    return [tool_call_message("", [("python", {"code": code})]),
            {"role": "tool", "name": "python", "content": item["example_output"]},
            {"role": "assistant", "content": f"```python\n{item['answer']}\n```"}]
