"""Tests of envs/tools.py: argument validation and the python tool's output format."""

import pytest

from reopold_agent.envs.tools import PythonTool, format_sandbox_result, validate_arguments
from reopold_agent.sandbox.base import SandboxLimit

SCHEMA = {
    "type": "object",
    "properties": {
        "code": {"type": "string"},
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "flag": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["m", "km"]},
        "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
    },
    "required": ["code"],
}


@pytest.mark.parametrize("arguments, problems", [
    ({"code": "x"}, []),
    ({"code": "x", "n": 3, "x": 2, "flag": False, "unit": "km", "bbox": [0, 1.5, 2, 3]}, []),
    ({}, ["missing required argument 'code'"]),
    ({"code": 1}, ["argument 'code' must be of type string, got int"]),
    ({"code": "x", "n": True}, ["argument 'n' must be of type integer, got bool"]),
    ({"code": "x", "n": 1.5}, ["argument 'n' must be of type integer, got float"]),
    ({"code": "x", "x": "1"}, ["argument 'x' must be of type number, got str"]),
    ({"code": "x", "unit": "mile"}, ["argument 'unit' must be one of ['m', 'km'], got 'mile'"]),
    ({"code": "x", "bbox": [1, 2]}, ["argument 'bbox' must have between 4 and 4 items, got 2"]),
    ({"code": "x", "bbox": [1, 2, 3, "4"]},
     ["every item of argument 'bbox' must be of type number"]),
    ({"code": "x", "extra": 1}, ["unexpected argument 'extra'"]),
])
def test_validate_arguments(arguments, problems):
    assert validate_arguments(arguments, SCHEMA) == problems


def test_additional_properties_allowed_when_declared():
    assert validate_arguments({"a": 1}, {"type": "object", "additionalProperties": True}) == []


def test_python_tool_success_error_and_silence(sandbox):
    tool = PythonTool(sandbox, timeout_s=5)
    assert tool(code="print(37*245)").text == "9065"
    assert tool(code="x = 1").text == "(no output; print() the values you need)"
    failed = tool(code="print('a')\n1/0")
    assert failed.error_kind == "python_error"
    assert failed.text.startswith("a\nTraceback")
    assert failed.text.endswith("ZeroDivisionError: division by zero")
    assert tool(cod="1").error_kind == "bad_arguments"


def test_python_tool_timeout_is_data(sandbox):
    out = PythonTool(sandbox, timeout_s=0.5)(code="print('started', flush=True)\nwhile True: pass")
    assert out.error_kind == "sandbox_wall_timeout"
    assert out.text.startswith("started\nExecution stopped: wall timeout limit hit after")


def test_python_tool_without_sandbox_reports_it():
    assert PythonTool(None).run(code="1").error_kind == "no_sandbox"


@pytest.mark.parametrize("limit", [SandboxLimit.MEMORY, SandboxLimit.OUTPUT, SandboxLimit.CPU_TIME])
def test_format_sandbox_limits(limit):
    out = format_sandbox_result("partial\n", "", -9, limit, 1.26)
    label = limit.value.replace("_", " ")
    assert out.text == f"partial\nExecution stopped: {label} limit hit after 1.3 s."
    assert out.error_kind == f"sandbox_{limit.value}"


def test_format_wall_timeout_counts_and_names_the_wait_for_a_worker():
    out = format_sandbox_result("", "the program did not run\n", None,
                                SandboxLimit.WALL_TIMEOUT, 0.0, queue_wait_s=2.04)
    assert out.text == ("the program did not run\nExecution stopped: wall timeout limit hit "
                        "after 2.0 s (2.0 s of it waiting for a free sandbox worker).")
    assert out.error_kind == "sandbox_wall_timeout" and out.queue_wait_s == 2.04


def test_format_success_with_stderr():
    out = format_sandbox_result("1\n", "warning: x\n", 0, SandboxLimit.NONE, 0.1)
    assert out.text == "1\nstderr:\nwarning: x" and out.error_kind is None
