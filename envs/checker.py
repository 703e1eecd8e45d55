"""``check_tool_env``: the contract every tool environment must meet, as small named checks.

In the spirit of ``gymnasium.utils.env_checker``: each ``check_*`` function tests one promise
of :mod:`reopold_agent.envs.base` and fails with a :class:`ToolEnvCheckError` whose message
says what to change. The checks reset the env many times; environments that run code need a
working sandbox.
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from .base import ToolEnv
from .info import EnvInfoError, ResetInfo
from .spaces import is_message

GARBAGE_ACTIONS: tuple[str, ...] = (
    "",
    "   \n\t",
    "<tool_call>",
    "</tool_call>",
    "<tool_call></tool_call>",
    "<tool_call>{}</tool_call>",
    "<tool_call>not json at all</tool_call>",
    '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
    "<tool_call>[1, 2, 3]</tool_call>",
    '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "x", "arguments": "{}"}</tool_call>',
    "<tool_call><tool_call>{}</tool_call></tool_call>",
    "<tool_call>" + "[" * 20_000 + "</tool_call>",
    '<tool_call>{"name": "x", "arguments": {"n": ' + "9" * 5_000 + "}}</tool_call>",
    bytes(range(256)).decode("latin-1"),
    b"\xff\xfe\x00<tool_call>\xc3".decode("utf-8", errors="surrogateescape"),
    "\\boxed{" * 100,
    "x" * 200_000,
    "<tool_call>{}</tool_call>" * 40,
)
"""Model outputs that must never make ``step`` raise."""


class ToolEnvCheckError(AssertionError):
    """A tool environment breaks the :class:`ToolEnv` contract."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ToolEnvCheckError(message)


def data_equal(a: Any, b: Any) -> bool:
    """Deep equality of observations and infos, comparing PIL images by pixels."""
    if isinstance(a, Image.Image) or isinstance(b, Image.Image):
        return (isinstance(a, Image.Image) and isinstance(b, Image.Image) and a.mode == b.mode
                and a.size == b.size and a.tobytes() == b.tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(data_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(data_equal, a, b))
    return type(a) is type(b) and a == b


def check_opening(env: Any, seed: int = 0) -> None:
    """What the engine needs of any environment, a plain ``gymnasium.Env`` included: ``reset``
    returns a non-empty list of chat messages and an info with the tools
    (:class:`~reopold_agent.envs.info.ResetInfo`)."""
    result = env.reset(seed=seed)
    _require(isinstance(result, tuple) and len(result) == 2, "reset must return (messages, info)")
    obs, info = result
    _require(isinstance(obs, list) and len(obs) > 0 and all(is_message(m) for m in obs),
             'reset must return a non-empty list of {"role", "content"} chat messages, got '
             f"{type(obs).__name__}")
    try:
        ResetInfo.from_info(info)
    except EnvInfoError as exc:
        raise ToolEnvCheckError(str(exc)) from None


def check_is_tool_env(env: Any) -> None:
    """The env is a ToolEnv (unwrap gymnasium wrappers with ``env.unwrapped``)."""
    _require(isinstance(env, ToolEnv), f"expected a ToolEnv subclass, got {type(env).__name__}; "
             "subclass reopold_agent.envs.ToolEnv (use env.unwrapped for wrapped envs)")


def check_reset(env: ToolEnv, seed: int = 0) -> None:
    """reset returns (messages, info) with tools and task metadata."""
    result = env.reset(seed=seed)
    _require(isinstance(result, tuple) and len(result) == 2, "reset must return (obs, info)")
    obs, info = result
    _require(isinstance(obs, list) and len(obs) > 0 and all(is_message(m) for m in obs),
             'reset must return a non-empty list of {"role", "content"} messages')
    _require(obs[-1]["role"] == "user", "the last opening message must be the user's")
    _require(env.observation_space.contains(obs), "reset obs is outside observation_space")
    for key in ("tools", "task", "prompt_id", "answer"):
        _require(key in info, f"reset info must contain {key!r}")
    _require(isinstance(info["answer"], str), 'info["answer"] must be a string')
    check_tool_schemas(info["tools"])


def check_tool_schemas(tools: Any) -> None:
    """Tools are declared in OpenAI function format with JSON-serialisable object schemas."""
    _require(isinstance(tools, list) and len(tools) > 0, 'info["tools"] must be a non-empty list')
    for schema in tools:
        fn = schema.get("function", {}) if isinstance(schema, dict) else {}
        _require(schema.get("type") == "function" and isinstance(fn.get("name"), str)
                 and fn.get("name") and isinstance(fn.get("description"), str),
                 f'each tool must be {{"type": "function", "function": {{"name", "description", '
                 f'"parameters"}}}}, got {schema!r}')
        _require(isinstance(fn.get("parameters"), dict)
                 and fn["parameters"].get("type") == "object",
                 f"parameters of tool {fn['name']!r} must be a JSON schema of type object")
        json.dumps(schema)


def check_seeded_determinism(env: ToolEnv, seed: int = 0) -> None:
    """Two resets with the same seed give identical observations and infos."""
    obs_a, info_a = env.reset(seed=seed)
    obs_b, info_b = env.reset(seed=seed)
    _require(data_equal(obs_a, obs_b), "reset(seed=s) twice gave different observations: draw "
             "every random choice from self.np_random (seeded by super().reset(seed=seed))")
    _require(data_equal(info_a, info_b), "reset(seed=s) twice gave different infos")


def _check_step_result(result: Any, action: str) -> None:
    label = repr(action[:40])
    _require(isinstance(result, tuple) and len(result) == 5,
             f"step({label}) must return (obs, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    _require(isinstance(obs, list) and all(is_message(m) for m in obs),
             f"step({label}) must return a list of messages")
    _require(isinstance(reward, float) and 0.0 <= reward <= 1.0,
             f"step({label}) reward must be a float in [0, 1], got {reward!r}")
    _require(isinstance(terminated, bool) and isinstance(truncated, bool),
             f"step({label}) terminated/truncated must be bools")
    for key in ("tool_calls", "tool_errors", "error_kinds"):
        _require(key in info, f"step({label}) info must contain {key!r}")
    if not terminated:
        _require(len(obs) == info["tool_calls"] > 0,
                 f"step({label}) without a final answer must return one tool message per call")


def check_garbage_actions(env: ToolEnv, seed: int = 0) -> None:
    """step never raises on malformed model output; each error is counted in info."""
    bad_args = ['<tool_call>{"name": "%s", "arguments": {"zz_unknown": [1]}}</tool_call>' % t.name
                for t in env.tools]
    for action in (*GARBAGE_ACTIONS, *bad_args):
        env.reset(seed=seed)
        try:
            result = env.step(action)
        except Exception as exc:
            raise ToolEnvCheckError(f"step raised {type(exc).__name__}: {exc} on model output "
                                    f"{action[:60]!r}; malformed output must become an error "
                                    "tool message") from exc
        _check_step_result(result, action)
        if not result[2]:
            _require(result[4]["tool_errors"] > 0,
                     f"step({action[:40]!r}) ran a malformed call without counting an error")


def check_final_answer_terminates(env: ToolEnv, seed: int = 0) -> None:
    """A turn without tool calls ends the episode with a verified reward."""
    env.reset(seed=seed)
    obs, reward, terminated, truncated, info = env.step("I am not sure. \\boxed{-1}")
    _require(terminated and not truncated and obs == [],
             "a turn without tool calls must terminate with observation []")
    try:
        env.step("again")
    except RuntimeError:
        pass
    else:
        raise ToolEnvCheckError("step after the episode ended must raise RuntimeError")


def check_tool_round_cap(env: ToolEnv, seed: int = 0) -> None:
    """Every one of ``max_tool_rounds`` tool rounds returns its results untruncated; one more
    turn with tool calls truncates the episode and returns nothing."""
    env.reset(seed=seed)
    call = '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>'
    for round_ in range(1, env.max_tool_rounds + 1):
        obs, _, terminated, truncated, _ = env.step(call)
        _require(not terminated and not truncated and len(obs) == 1,
                 f"tool round {round_} of {env.max_tool_rounds} must return its tool messages, untruncated")
    obs, _, terminated, truncated, _ = env.step(call)
    _require(truncated and not terminated and obs == [],
             f"a tool call after {env.max_tool_rounds} rounds must truncate the episode without running, "
             f"got truncated={truncated}, {len(obs)} messages")


def check_tool_env(env: Any, seed: int = 0) -> None:
    """Run every check on ``env`` (resets it many times).

    Raises:
        ToolEnvCheckError: the first broken promise, with what to change.
    """
    check_is_tool_env(env)
    check_reset(env, seed)
    check_seeded_determinism(env, seed)
    check_final_answer_terminates(env, seed)
    check_tool_round_cap(env, seed)
    check_garbage_actions(env, seed)
