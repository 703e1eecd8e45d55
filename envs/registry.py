"""Finding tool environments: built-ins, user registrations, ``module:Env`` ids and plugins.

A tool environment is a :class:`ToolEnv` or any plain ``gymnasium.Env`` that follows the
contract of :mod:`reopold_agent.envs.base` (reset: chat messages and ``info["tools"]``; step:
the assistant's text in, tool messages and a reward out). It works everywhere a built-in does
when it is

(a) registered with ``gymnasium.register(id=..., entry_point="module:Class")``,
(b) named as ``"their_module:TheirEnv-v0"`` (the module is imported first and registers it), or
(c) exposed by an installed package in the ``reopold_agent.envs`` entry-point group, either
    ``"Acme/Units-v0" = "acme.envs:UnitsEnv"`` (a ``ToolEnv`` class, registered under the
    entry-point name) or ``"acme" = "acme.envs:register"`` (a function that registers; it
    must tolerate being called again).

:func:`make_env` resolves all three and returns the bare environment: it calls
``gymnasium.make(..., disable_env_checker=True)`` and unwraps gymnasium's ``OrderEnforcing``,
because the engine calls ``reset`` and ``step`` from its own threads and reads the ``ToolEnv``
API where there is one (``num_items``, ``gold_turns``), and ``ToolEnv`` already enforces
reset-before-step and checks its own outputs
(:func:`~reopold_agent.envs.checker.check_tool_env`). gymnasium's own environments (CartPole,
...) are refused: they do not take text actions. Specs asking for ``TimeLimit``
(``max_episode_steps``) or extra wrappers are refused: the tool-round cap is the env's
``max_tool_rounds``. ``gymnasium.make`` itself still works on every built-in (with its usual
wrappers).

Registration writes gymnasium's global registry (gymnasium's design, not ours); every
function here is idempotent.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium
from gymnasium.envs.registration import EnvSpec, load_env_creator

from reopold_agent.tasks.spec import TASKS

from .base import ToolEnv

ENTRY_POINT_GROUP = "reopold_agent.envs"


class UnknownEnvError(KeyError):
    """No tool environment is registered under the requested id (a ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ToolInfo:
    """A tool of a listed environment."""

    name: str
    """Name the model calls."""
    description: str
    """Description shown to the model."""

    def __str__(self) -> str:
        return f"{self.name}: {self.description}"


@dataclass(frozen=True)
class EnvInfo:
    """One registered tool environment, as listed by ``reopold-agent envs``."""

    env_id: str
    """Gymnasium id, e.g. ``reopold_agent/ToolMath-v0``."""
    entry_point: str
    """``"module:Class"`` of the environment."""
    description: str
    """First line of the class docstring."""
    tools: tuple[ToolInfo, ...]
    """The env's tools; empty when it cannot be built without constructor kwargs."""


def register_builtin_envs() -> None:
    """Register the built-in environments of :data:`reopold_agent.tasks.spec.TASKS`."""
    for task in TASKS.values():
        if task.env_id not in gymnasium.registry:
            gymnasium.register(id=task.env_id, entry_point=task.entry_point,
                               kwargs=dict(task.env_kwargs))


def load_plugin_envs() -> list[str]:
    """Load the ``reopold_agent.envs`` entry points of installed packages.

    A broken plugin is skipped with a ``RuntimeWarning`` naming it, never an exception.

    Returns:
        Names of the entry points that loaded.
    """
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, gymnasium.Env):
                if ep.name not in gymnasium.registry:
                    gymnasium.register(id=ep.name, entry_point=ep.value)
            elif callable(obj):
                obj()
            else:
                raise TypeError(f"{ep.value} is neither an Env class nor a function")
            loaded.append(ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            dist = getattr(ep.dist, "name", "unknown package") if ep.dist else "unknown package"
            warnings.warn(f"skipping {ENTRY_POINT_GROUP} plugin {ep.name!r} = {ep.value!r} "
                          f"from {dist}: {type(exc).__name__}: {exc}", RuntimeWarning,
                          stacklevel=2)
    return loaded


def _tool_env_class(spec: EnvSpec) -> type[ToolEnv] | None:
    """The ToolEnv class behind a spec, or None (gymnasium's own envs are not imported)."""
    entry = spec.entry_point
    if isinstance(entry, str):
        if entry.startswith("gymnasium."):
            return None
        try:
            entry = load_env_creator(entry)
        except Exception:
            return None
    return entry if isinstance(entry, type) and issubclass(entry, ToolEnv) else None


def tool_env_ids() -> list[str]:
    """Sorted ids of every registered tool environment (after loading plugins)."""
    load_plugin_envs()
    return sorted(i for i, spec in gymnasium.registry.items() if _tool_env_class(spec))


def _resolve(env_id: str) -> str:
    """Import ``module:`` prefixes and load plugins; return the bare registered id."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownEnvError(f"cannot import module {module!r} named in {env_id!r}: "
                                  f"{exc}") from None
    if name not in gymnasium.registry:
        load_plugin_envs()
    if name in gymnasium.registry and _is_gymnasium_own(gymnasium.registry[name]):
        raise UnknownEnvError(f"{name!r} is one of gymnasium's own environments, not a tool environment "
                              "(text actions, chat-message observations; see docs/environments.md)")
    if name not in gymnasium.registry:
        known = tool_env_ids()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownEnvError(
            f"unknown tool environment {name!r}.{hint} Available: {', '.join(known)}. "
            "Register yours with gymnasium.register(...), name it as 'module:Env-v0', or "
            f"expose it through the {ENTRY_POINT_GROUP!r} entry-point group.")
    return name


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """Build a tool environment by id (see the module docstring for how ids resolve).

    Args:
        env_id: ``"namespace/Name-vN"`` or ``"module:namespace/Name-vN"``.
        **kwargs: constructor kwargs (e.g. ``sandbox=``, ``split=``, ``max_tool_rounds=``).

    Returns:
        The unwrapped environment: a :class:`ToolEnv`, or a plain ``gymnasium.Env``.

    Raises:
        UnknownEnvError: no tool environment has that id; the message lists the known ones.
        ValueError: the registered spec asks for gymnasium wrappers.
    """
    name = _resolve(env_id)
    spec = gymnasium.spec(name)
    if spec.max_episode_steps is not None or spec.additional_wrappers:
        raise ValueError(f"{name} is registered with max_episode_steps or wrappers; tool "
                         "environments cap episodes with max_tool_rounds instead")
    return gymnasium.make(name, disable_env_checker=True, **kwargs).unwrapped


def accepted_keywords(env_id: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names`` the constructor of ``env_id`` takes (all, for a ``ToolEnv`` or a
    constructor with ``**kwargs``): the run passes ``split`` and ``sandbox`` only to
    environments that take them.

    Raises:
        UnknownEnvError: as :func:`make_env`.
    """
    spec = gymnasium.spec(_resolve(env_id))
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    if isinstance(creator, type) and issubclass(creator, ToolEnv):
        return names
    try:
        params = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass everything
        return names
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return names
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return tuple(n for n in names if n in named)


def _is_gymnasium_own(spec: EnvSpec) -> bool:
    entry = spec.entry_point
    module = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
    return module.split(".")[0] == "gymnasium"


def _entry_point_text(spec: EnvSpec, cls: type) -> str:
    if isinstance(spec.entry_point, str):
        return spec.entry_point
    return f"{cls.__module__}:{cls.__qualname__}"


def list_envs() -> list[EnvInfo]:
    """Every registered tool environment with its tools (built with default kwargs)."""
    infos = []
    for env_id in tool_env_ids():
        spec = gymnasium.registry[env_id]
        cls = _tool_env_class(spec)
        assert cls is not None
        try:
            env = cls(**spec.kwargs)
            tools = tuple(ToolInfo(t.name, t.description) for t in env.tools)
            env.close()
        except Exception:  # needs kwargs we cannot guess
            tools = ()
        doc = (cls.__doc__ or "").strip().splitlines()
        infos.append(EnvInfo(env_id, _entry_point_text(spec, cls), doc[0] if doc else "",
                             tools))
    return infos
