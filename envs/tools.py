"""Tools that environments expose to the model: declaration, argument checking, the python tool.

A tool is a small object with a ``name``, a ``description``, a JSON-schema ``parameters`` object
and a ``run(**arguments) -> ToolOutput`` method. :meth:`Tool.schema` gives the OpenAI function
format that chat templates consume; :func:`validate_arguments` checks a call against the schema
(required keys, unknown keys, basic types, enums, array lengths) and returns readable problems.

Tool failures are data: a tool returns a :class:`ToolOutput` with ``error_kind`` set rather
than raising (an exception from ``run`` is still caught by the environment and reported).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from reopold_agent.sandbox.base import Sandbox, SandboxLimit
from reopold_agent.sandbox.lazy import LazySandbox

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


@dataclass
class ToolOutput:
    """What one tool call returns to the model."""

    text: str = ""
    """Text part of the result (may be empty when images carry it)."""
    images: list[Image.Image] = field(default_factory=list)
    """Images returned to the model, in order, shown before the text."""
    error_kind: str | None = None
    """Short failure label counted in ``info["error_kinds"]`` (e.g. ``python_error``);
    None when the call succeeded."""
    queue_wait_s: float = 0.0
    """Seconds the call waited for a free sandbox worker (part of its wall limit)."""


def _type_ok(value: Any, json_type: str | list[str]) -> bool:
    """Whether ``value`` has JSON type ``json_type`` (bool is not an integer or number)."""
    types = [json_type] if isinstance(json_type, str) else list(json_type)
    for name in types:
        expected = _JSON_TYPES.get(name)
        if expected is None:
            return True  # unknown type names are not checked
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, expected):
            return True
    return False


def _check_value(key: str, value: Any, schema: dict[str, Any]) -> list[str]:
    """Problems of one argument value against its property schema."""
    json_type = schema.get("type")
    if json_type is not None and not _type_ok(value, json_type):
        return [f"argument {key!r} must be of type {json_type}, got {type(value).__name__}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"argument {key!r} must be one of {schema['enum']}, got {value!r}")
    if isinstance(value, list):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
            problems.append(f"argument {key!r} must have between {lo} and {hi} items, "
                            f"got {len(value)}")
        item_type = schema.get("items", {}).get("type")
        if item_type and not all(_type_ok(v, item_type) for v in value):
            problems.append(f"every item of argument {key!r} must be of type {item_type}")
    return problems


def validate_arguments(arguments: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """Check call arguments against a tool's JSON-schema ``parameters``.

    Args:
        arguments: decoded arguments object of the call.
        parameters: ``{"type": "object", "properties": {...}, "required": [...]}``.

    Returns:
        Human-readable problems (empty when the arguments are acceptable). Unknown keys are
        problems unless the schema sets ``additionalProperties`` to true.
    """
    properties: dict[str, Any] = parameters.get("properties", {})
    problems = [f"missing required argument {key!r}"
                for key in parameters.get("required", []) if key not in arguments]
    if not parameters.get("additionalProperties", False):
        problems += [f"unexpected argument {key!r}" for key in arguments if key not in properties]
    for key, value in arguments.items():
        if key in properties:
            problems += _check_value(key, value, properties[key])
    return problems


class Tool(abc.ABC):
    """A callable tool declared by name, description and JSON-schema parameters.

    Subclasses set the three class attributes and implement :meth:`run`. Example::

        class Lookup(Tool):
            name = "lookup"
            description = "Look a word up in the dictionary."
            parameters = {"type": "object", "properties": {"word": {"type": "string"}},
                          "required": ["word"]}

            def run(self, word: str) -> ToolOutput:
                return ToolOutput(text=DICTIONARY.get(word, "not found"))
    """

    name: str = ""
    """Name the model uses in ``{"name": ...}``."""
    description: str = ""
    """One or two sentences shown to the model."""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    """JSON schema of the arguments object (never mutated)."""

    @abc.abstractmethod
    def run(self, **arguments: Any) -> ToolOutput:
        """Execute the tool on already validated arguments."""

    def validate(self, arguments: dict[str, Any]) -> list[str]:
        """Problems of ``arguments`` against :attr:`parameters` (empty when valid)."""
        return validate_arguments(arguments, self.parameters)

    def __call__(self, **arguments: Any) -> ToolOutput:
        """Validate then run; invalid arguments give a ``bad_arguments`` output, not an error."""
        problems = self.validate(arguments)
        if problems:
            return ToolOutput(text="; ".join(problems), error_kind="bad_arguments")
        return self.run(**arguments)

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling declaration of this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def format_sandbox_result(stdout: str, stderr: str, exit_code: int | None,
                          limit: SandboxLimit, duration_s: float,
                          queue_wait_s: float = 0.0) -> ToolOutput:
    """Turn a sandbox result into what the model sees.

    Args:
        stdout: program output.
        stderr: program error output (traceback on failure).
        exit_code: process exit status (None if it never started).
        limit: the limit that stopped it, or ``SandboxLimit.NONE``.
        duration_s: wall-clock seconds the program ran.
        queue_wait_s: seconds the call waited for a free sandbox worker first.

    Returns:
        Successful runs: stdout with trailing whitespace removed (plus stderr, if any, after a
        ``stderr:`` line); failures add the error and set ``error_kind`` to ``python_error``
        or ``sandbox_<limit>``. A limit note counts the wait in the elapsed time and names
        it when it was a tenth of a second or more. ``queue_wait_s`` is passed on.
    """
    out = stdout.rstrip()
    err = stderr.rstrip()
    if limit is not SandboxLimit.NONE:
        label = limit.value.replace("_", " ")
        waited = f" ({queue_wait_s:.1f} s of it waiting for a free sandbox worker)" \
            if queue_wait_s >= 0.1 else ""
        note = (f"Execution stopped: {label} limit hit after "
                f"{duration_s + queue_wait_s:.1f} s{waited}.")
        text = "\n".join(p for p in (out, err, note) if p)
        return ToolOutput(text=text, error_kind=f"sandbox_{limit.value}",
                          queue_wait_s=queue_wait_s)
    if exit_code != 0:
        text = "\n".join(p for p in (out, err or f"exit code {exit_code}") if p)
        return ToolOutput(text=text, error_kind="python_error", queue_wait_s=queue_wait_s)
    if not out and not err:
        return ToolOutput(text="(no output; print() the values you need)",
                          queue_wait_s=queue_wait_s)
    return ToolOutput(text=out + (f"\nstderr:\n{err}" if err else ""),
                      queue_wait_s=queue_wait_s)


def sandbox_or_default(sandbox: Sandbox | None, env_id: str) -> tuple[Sandbox, bool]:
    """The sandbox an environment that runs code uses, and whether the env owns it.

    ``sandbox`` when one is passed (the caller closes it); otherwise a
    :class:`~reopold_agent.sandbox.LazySandbox` that builds the default fail-closed local
    sandbox at the first tool call or verification and that the env closes in ``close()``.
    Where isolation is impossible that first call raises ``SandboxUnavailable`` naming
    ``env_id`` and what to pass instead.
    """
    if sandbox is not None:
        return sandbox, False
    return LazySandbox(owner=env_id), True


class PythonTool(Tool):
    """Runs a Python program in a :class:`~reopold_agent.sandbox.base.Sandbox`."""

    name = "python"
    description = ("Run a Python program and return what it prints. Use print() to see "
                   "results; state is not kept between calls.")
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to run."}},
        "required": ["code"],
    }

    def __init__(self, sandbox: Sandbox | None, *, timeout_s: float | None = 10.0) -> None:
        """Args:
            sandbox: where programs run; None makes every call return a ``no_sandbox`` error
                (the built-in environments always pass one, see :func:`sandbox_or_default`).
            timeout_s: wall-clock limit per call, passed to ``Sandbox.run``.
        """
        self.sandbox = sandbox
        self.timeout_s = timeout_s

    def run(self, code: str) -> ToolOutput:
        if self.sandbox is None:
            return ToolOutput(text="no sandbox is configured", error_kind="no_sandbox")
        result = self.sandbox.run(code, timeout_s=self.timeout_s)
        return format_sandbox_result(result.stdout, result.stderr, result.exit_code,
                                     result.limit, result.duration_s, result.queue_wait_s)
