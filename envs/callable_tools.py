"""Tools given as plain Python callables, and tool lists named in a configuration.

:class:`FunctionTool` turns a function into a :class:`~reopold_agent.envs.tools.Tool`: its
name, the first paragraph of its docstring as the description, and a JSON schema of its
parameters read from the signature (``str`` -> string, ``int`` -> integer, ``float`` ->
number, ``bool`` -> boolean, ``list`` -> array, ``dict`` -> object; parameters without a
default are required). Any of the three can be given instead. The function runs in the
trainer's process, on the arguments the model sent once they match the schema; what it returns
becomes the tool message (a string as it is, a :class:`ToolOutput` as it is, anything else as
JSON). Code the model writes must not run this way: the ``python`` tool runs it in the sandbox.

:func:`resolve_tools` reads the ``tools`` list of
:class:`~reopold_agent.envs.prompt_dataset.PromptDatasetEnv`, whose entries are ``"python"``,
``"module:name"`` (a function, a ``Tool`` instance or class, or a list of them), a mapping
``{"function": "module:name", "name"?, "description"?, "parameters"?}``, or the objects
themselves.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing
from typing import Any, Callable, Sequence

from .tools import PythonTool, Tool, ToolOutput

_JSON_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class FunctionTool(Tool):
    """A Python function called as a tool (see the module docstring)."""

    def __init__(self, function: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 parameters: dict[str, Any] | None = None) -> None:
        """Raises:
            TypeError: ``function`` is not callable, or takes ``*args`` (arguments arrive by name).
        """
        if not callable(function):
            raise TypeError(f"a tool function must be callable, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", "")
        if not self.name or not self.name.isidentifier():
            raise TypeError(f"tool {function!r} needs a name (an identifier); pass name=")
        self.description = description if description is not None else _first_paragraph(function)
        self.parameters = parameters if parameters is not None else parameters_schema(function)

    def run(self, **arguments: Any) -> ToolOutput:
        result = self.function(**arguments)
        if isinstance(result, ToolOutput):
            return result
        return ToolOutput(text=result if isinstance(result, str) else json.dumps(result, default=str))


def parameters_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """JSON schema of ``function``'s keyword arguments, from its signature and type hints.

    Raises:
        TypeError: the function takes ``*args`` (a tool's arguments arrive by name).
    """
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # hints naming what this module cannot import: leave the types out
        hints = {}
    properties: dict[str, Any] = {}
    required = []
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"tool function {function.__name__} takes *{param.name}; tools get keyword arguments")
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        kind = _JSON_TYPE.get(typing.get_origin(hints.get(param.name)) or hints.get(param.name))
        properties[param.name] = {"type": kind} if kind else {}
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    return {"type": "object", "properties": properties, "required": required}


def _first_paragraph(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return " ".join(doc.split("\n\n")[0].split())


def import_object(reference: str, what: str) -> Any:
    """The object ``module:name`` names (``name`` may be dotted).

    Raises:
        ValueError: ``reference`` is not ``module:name``, or the module or name is not found.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} {reference!r} must look like module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {reference!r}: cannot import module {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {reference!r}: module {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    return obj


def resolve_tools(specs: Sequence[Any], *, sandbox: Any, python_timeout_s: float | None = 10.0) -> list[Tool]:
    """The tools ``specs`` name (see the module docstring); ``"python"`` runs in ``sandbox``.

    Raises:
        ValueError: ``tools[i]: reason`` for an entry that names nothing usable.
    """
    if isinstance(specs, (str, dict)) or not isinstance(specs, Sequence):
        raise ValueError(f"tools must be a list, got {type(specs).__name__}")
    tools: list[Tool] = []
    for number, spec in enumerate(specs):
        try:
            tools.extend(_tools_of(spec, sandbox, python_timeout_s))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tools[{number}]: {exc}") from None
    return tools


def _tools_of(spec: Any, sandbox: Any, python_timeout_s: float | None) -> list[Tool]:
    if spec == "python":
        return [PythonTool(sandbox, timeout_s=python_timeout_s)]
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"function", "name", "description", "parameters"})
        if unknown or "function" not in spec:
            raise ValueError(f"a tool mapping has keys function, name, description, parameters; got {sorted(spec)}")
        function = spec["function"]
        if isinstance(function, str):
            function = import_object(function, "tool function")
        return [FunctionTool(function, name=spec.get("name"), description=spec.get("description"),
                             parameters=spec.get("parameters"))]
    obj = import_object(spec, "tool") if isinstance(spec, str) else spec
    if isinstance(obj, (list, tuple)):
        return [tool for entry in obj for tool in _tools_of(entry, sandbox, python_timeout_s)]
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, Tool):
        return [obj()]
    if callable(obj):
        return [FunctionTool(obj)]
    raise ValueError(f"{spec!r} is not a function, a Tool or a list of them")
