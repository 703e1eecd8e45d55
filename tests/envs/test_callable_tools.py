"""Tools from Python callables: schemas from signatures, running, and tool lists from references."""

from __future__ import annotations

import pytest

from reopold_agent.envs import FunctionTool, PythonTool, ToolOutput
from reopold_agent.envs.callable_tools import import_object, parameters_schema, resolve_tools
from tests.envs import prompt_tools


def test_schema_and_description_come_from_the_function():
    tool = FunctionTool(prompt_tools.repeat)
    assert tool.name == "repeat" and tool.description == "Repeat a text."
    assert tool.parameters == {"type": "object", "required": ["text"],
                               "properties": {"text": {"type": "string"}, "times": {"type": "integer"},
                                              "separator": {"type": "string"}}}
    assert FunctionTool(prompt_tools.add).description == "Add two integers."
    assert tool.run(text="ab", times=3).text == "ab ab ab"
    assert FunctionTool(prompt_tools.add).run(a=2, b=3).text == "5"  # non-strings as JSON
    assert FunctionTool(lambda: {"k": [1]}, name="probe").run().text == '{"k": [1]}'
    assert FunctionTool(lambda: ToolOutput("x", error_kind="e"), name="raw").run().error_kind == "e"


def test_arguments_are_checked_against_the_schema_before_the_call():
    tool = FunctionTool(prompt_tools.add)
    out = tool(a=1, b="two")
    assert out.error_kind == "bad_arguments" and "'b' must be of type integer" in out.text
    assert tool(a=1).text == "missing required argument 'b'"


def test_functions_that_cannot_be_tools_are_refused():
    with pytest.raises(TypeError, match=r"takes \*values"):
        parameters_schema(lambda *values: None)
    with pytest.raises(TypeError, match="needs a name"):
        FunctionTool(lambda: 1)
    with pytest.raises(TypeError, match="must be callable"):
        FunctionTool(3)


def test_references_resolve_to_tools():
    sandbox = object()
    tools = resolve_tools(["python", "tests.envs.prompt_tools:add",
                           {"function": "tests.envs.prompt_tools:repeat", "name": "echo", "description": "Echo."},
                           "tests.envs.prompt_tools:TOOLS", prompt_tools.add], sandbox=sandbox)
    assert [t.name for t in tools] == ["python", "add", "echo", "add", "repeat", "add"]
    assert isinstance(tools[0], PythonTool) and tools[0].sandbox is sandbox
    assert tools[2].description == "Echo." and tools[2].run(text="hi").text == "hi hi"


@pytest.mark.parametrize("specs, message", [
    (["tests.envs.prompt_tools:nothing"], r"tools\[0\]: tool 'tests.envs.prompt_tools:nothing': module "),
    (["add", "no_such_module_zz:f"], r"tools\[0\]: tool 'add' must look like module:name"),
    ([{"fn": "x:y"}], r"tools\[0\]: a tool mapping has keys"),
    ([3], r"tools\[0\]: 3 is not a function, a Tool or a list of them"),
    ("python", "tools must be a list"),
])
def test_bad_references_name_the_entry(specs, message):
    with pytest.raises(ValueError, match=message):
        resolve_tools(specs, sandbox=None)


def test_import_object_reports_a_missing_module():
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_zz'"):
        import_object("no_such_module_zz:f", "verifier")
