"""The tool-environment contract: a plain gymnasium ``Env`` whose actions are assistant turns.

An episode::

    obs, info = env.reset(seed=0)            # obs: [system, user] messages; info["tools"]
    obs, reward, terminated, truncated, info = env.step(assistant_text)

* ``reset`` returns the chat messages that open the episode and, in ``info``, the tool schemas
  (``info["tools"]``, OpenAI function format), ``task``, ``prompt_id``, ``split``, ``index`` and
  the gold ``answer`` (for logging only; never show it to the model).
* ``step(action)`` takes the assistant's raw text for one turn. Tool calls in it
  (``<tool_call>`` blocks, see :mod:`reopold_agent.tool_protocol`) are run in order and the
  observation is one ``{"role": "tool", "name", "content"}`` message per call (content is a
  string, or a list of ``{"type": "image", "image": PIL.Image}`` / ``{"type": "text", "text"}``
  parts). Malformed calls come back as tool messages that say what was wrong. A turn with no
  tool call is the final answer: it is verified, ``reward`` is in [0, 1], ``terminated`` is
  True and the observation is ``[]``. ``max_tool_rounds`` is the number of tool rounds whose
  results the model gets to read: after that many, the model has one more turn to answer, and a
  turn that calls tools again is not run: the observation is ``[]`` and ``truncated`` is True.
* ``step`` never raises on model output. It raises only on misuse (``step`` before ``reset``
  or after the episode ended, a non-``str`` action).

The keys of ``info`` that the engine reads are typed in :mod:`reopold_agent.envs.info`. Any
``gymnasium.Env`` keeping this contract can be trained on (of ``reset``'s info, only ``tools``
is required); :class:`ToolEnv` is the convenient base class that adds numbered items, splits,
verifiers, tool-call parsing and the sandbox. Its subclasses provide items
(:meth:`ToolEnv.num_items`, :meth:`ToolEnv.load_item`), the opening messages
(:meth:`ToolEnv.prompt`) and the verifier (:meth:`ToolEnv.verify`), and pass their tools to
``__init__``. Departure from gymnasium: ``metadata`` is inherited unchanged
(``{"render_modes": []}``); tool environments do not render.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import gymnasium
import numpy as np
from PIL import Image

from reopold_agent.sandbox.base import SandboxUnavailable
from reopold_agent.tasks.spec import Verdict
from reopold_agent.tool_protocol import (
    DEFAULT_MAX_CHARS,
    ErrorKind,
    ToolCall,
    ToolCallError,
    error_message,
    parse_tool_calls,
    truncate_output,
)

from .arguments import at_least
from .info import ResetInfo, StepInfo
from .spaces import MessagesSpace, TextSpace
from .tools import Tool, ToolOutput

Message = dict[str, Any]
"""A chat message: ``{"role": ..., "content": str | list[part], ...}``."""

SPLITS = ("train", "eval")


def _fingerprint(obj: Any) -> str:
    """Stable stand-in for non-JSON values when hashing a caller-supplied item."""
    if isinstance(obj, Image.Image):
        return hashlib.sha1(obj.tobytes()).hexdigest()
    return f"<{type(obj).__name__}>"


class ToolEnv(gymnasium.Env[list, str]):
    """Base class of multi-turn tool environments (see the module docstring for the contract)."""

    task_name: str = ""
    """Task name reported in ``info["task"]``; subclasses set it."""

    def __init__(
        self,
        *,
        tools: Sequence[Tool],
        split: str = "train",
        sandbox: Any = None,
        owns_sandbox: bool = False,
        max_tool_rounds: int = 4,
        max_calls_per_turn: int = 4,
        max_turn_chars: int = DEFAULT_MAX_CHARS,
        max_tool_output_chars: int = 4_000,
    ) -> None:
        """Args:
            tools: tools the model may call (names must be unique).
            split: ``"train"`` or ``"eval"``.
            sandbox: the run's code sandbox (:class:`reopold_agent.sandbox.Sandbox`), kept as
                ``self.sandbox`` for tools that run code; the trainer passes it to every env.
            owns_sandbox: :meth:`close` closes ``sandbox`` (for one the env built itself; a
                sandbox passed in belongs to the caller, who closes it).
            max_tool_rounds: tool rounds the model can use: their results are returned, and
                a further turn with tool calls truncates the episode without running them.
            max_calls_per_turn: tool calls run per turn; extra ones are reported as errors.
            max_turn_chars: longer assistant turns are rejected with one error message.
            max_tool_output_chars: tool output text is cut (head and tail kept) past this.

        Raises:
            ValueError: a bad split, limit or duplicate tool name.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for name, value in (("max_tool_rounds", max_tool_rounds), ("max_calls_per_turn", max_calls_per_turn),
                            ("max_turn_chars", max_turn_chars), ("max_tool_output_chars", max_tool_output_chars)):
            at_least(name, value, 1)
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        self.tools = list(tools)
        self.split = split
        self.sandbox = sandbox
        self.owns_sandbox = owns_sandbox
        self.max_tool_rounds = max_tool_rounds
        self.max_calls_per_turn = max_calls_per_turn
        self.max_turn_chars = max_turn_chars
        self.max_tool_output_chars = max_tool_output_chars
        self.action_space = TextSpace(max_length=max_turn_chars)
        self.observation_space = MessagesSpace()
        self._tools_by_name = {t.name: t for t in self.tools}
        self.item: dict[str, Any] | None = None
        """The current episode's item (None before the first reset)."""
        self._prompt_id = ""
        self._rounds = 0
        self._done = True

    # ---- hooks for subclasses -------------------------------------------------------------

    def num_items(self) -> int:
        """Number of items in this env's split (``options={"index": i}`` takes 0 <= i < n)."""
        raise NotImplementedError(f"{type(self).__name__} must implement num_items()")

    def load_item(self, index: int) -> dict[str, Any]:
        """The item at ``index`` of this env's split; must hold an ``"answer"`` key."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_item()")

    def prompt(self, item: dict[str, Any]) -> list[Message]:
        """The messages (system, user) that open an episode on ``item``."""
        raise NotImplementedError(f"{type(self).__name__} must implement prompt()")

    def verify(self, item: dict[str, Any], text: str) -> Verdict:
        """Judge the final assistant turn ``text`` against ``item``."""
        raise NotImplementedError(f"{type(self).__name__} must implement verify()")

    def item_from_options(self, item: dict[str, Any]) -> dict[str, Any]:
        """Check and complete an item passed as ``reset(options={"item": ...})``."""
        if "answer" not in item:
            raise ValueError(f'options["item"] needs an "answer" key, got keys {sorted(item)}')
        return dict(item)

    def item_info(self, item: dict[str, Any]) -> dict[str, Any]:
        """Extra task metadata put in the reset ``info`` (e.g. difficulty)."""
        return {}

    def gold_for_item(self, item: dict[str, Any]) -> list[Message]:
        """Assistant and tool messages that solve ``item`` (see :meth:`gold_turns`)."""
        raise NotImplementedError(f"{type(self).__name__} has no gold trajectories")

    def gold_turns(self) -> list[Message]:
        """Assistant and tool messages that solve the current item (for SFT and tests).

        Assistant messages carry ``tool_calls`` (OpenAI style, ``arguments`` as objects);
        :func:`reopold_agent.tool_protocol.assistant_text` gives the raw text to ``step``.
        """
        if self.item is None:
            raise RuntimeError("call reset() before gold_turns()")
        return self.gold_for_item(self.item)

    def check_ready(self) -> None:
        """Raise a clear error when a collaborator (e.g. a sandbox) is missing."""

    # ---- gymnasium API --------------------------------------------------------------------

    def close(self) -> None:
        """Release what the env owns: the sandbox it built for itself (idempotent)."""
        if self.owns_sandbox and self.sandbox is not None:
            self.sandbox.close()

    def tool_schemas(self) -> list[dict[str, Any]]:
        """OpenAI function declarations of this env's tools (fresh copies)."""
        return [json.loads(json.dumps(t.schema())) for t in self.tools]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode.

        Args:
            seed: seeds ``self.np_random``, which picks the item when ``options`` does not.
            options: ``{"index": i}`` selects item ``i`` of the split; ``{"item": {...}}``
                plays a caller-supplied item.

        Returns:
            ``(messages, info)``; info keys: ``tools``, ``task``, ``prompt_id``, ``split``,
            ``index`` (None for a supplied item), ``answer`` and any :meth:`item_info` keys.

        Raises:
            ValueError / IndexError: unknown option keys or an index outside the split.
        """
        super().reset(seed=seed)
        self.check_ready()
        index, item = self._choose_item(options or {})
        self.item = item
        self._rounds, self._done = 0, False
        if index is None:
            key = json.dumps(item, sort_keys=True, default=_fingerprint).encode()
            self._prompt_id = f"{self.task_name}/item/{hashlib.sha1(key).hexdigest()[:12]}"
        else:
            self._prompt_id = f"{self.task_name}/{self.split}/{index}"
        info = {
            **ResetInfo(self.tool_schemas(), task=self.task_name, prompt_id=self._prompt_id).to_info(),
            "split": self.split,
            "index": index,
            "answer": str(item["answer"]),
            **self.item_info(item),
        }
        return self.prompt(item), info

    def _choose_item(self, options: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        unknown = set(options) - {"index", "item"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; use 'index' or 'item'")
        if "item" in options:
            if not isinstance(options["item"], dict):
                raise ValueError('options["item"] must be a dict')
            return None, self.item_from_options(options["item"])
        n = self.num_items()
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(n))
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                or not 0 <= index < n:
            raise IndexError(f"index must be an int in [0, {n}) for split {self.split!r}, "
                             f"got {index!r}")
        return int(index), self.load_item(int(index))

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Play one assistant turn (see the module docstring).

        Returns:
            ``(observation, reward, terminated, truncated, info)``; info keys: ``tool_calls``,
            ``tool_errors``, ``error_kinds``, ``tool_rounds``, ``task``, ``prompt_id``; on the
            final answer also ``answer``, ``extracted``, ``correct``, ``verify_detail``.

        Raises:
            RuntimeError: ``step`` before ``reset`` or after the episode ended.
            TypeError: ``action`` is not a str.
        """
        if self.item is None or self._done:
            raise RuntimeError("call reset() before step(): the episode "
                               + ("has not started" if self.item is None else "is over"))
        if not isinstance(action, str):
            raise TypeError(f"action must be the assistant's text (str), got {type(action)}")
        parsed = parse_tool_calls(action, max_calls=self.max_calls_per_turn,
                                  max_chars=self.max_turn_chars)
        info: dict[str, Any] = {"task": self.task_name, "prompt_id": self._prompt_id}
        if parsed.is_final:
            self._done = True
            verdict = self._safe_verify(action)
            reward = min(1.0, max(0.0, float(verdict.reward)))
            extracted = None if verdict.extracted is None else str(verdict.extracted)
            info.update(StepInfo(0, extracted=extracted, correct=reward == 1.0).to_info(),
                        tool_rounds=self._rounds, answer=str(self.item["answer"]),
                        verify_detail=verdict.detail)
            return [], reward, True, False, info
        if self._rounds >= self.max_tool_rounds:  # no turn would follow to read the results
            self._done = True
            info.update(StepInfo(0).to_info(), tool_rounds=self._rounds)
            return [], 0.0, False, True, info
        messages, kinds, waited_s = [], [], 0.0
        for entry in parsed.in_order():
            message, kind, wait_s = self._run_entry(entry)
            messages.append(message)
            waited_s += wait_s
            if kind is not None:
                kinds.append(kind)
        self._rounds += 1
        info.update(StepInfo(len(messages), len(kinds), tuple(kinds),
                             tool_queue_wait_s=waited_s).to_info(),
                    tool_rounds=self._rounds)
        return messages, 0.0, False, False, info

    def _safe_verify(self, text: str) -> Verdict:
        """Verify, turning a verifier crash on odd model text into reward 0 with a reason."""
        try:
            return self.verify(self.item, text)
        except SandboxUnavailable:
            raise
        except Exception as exc:  # model text must never crash the rollout
            return Verdict(0.0, None, f"verifier failed: {type(exc).__name__}: {exc}")

    def _run_entry(self, entry: ToolCall | ToolCallError) -> tuple[Message, str | None, float]:
        """Run one parsed call (or report one parse error) as a tool message; also returns
        its error kind and the seconds it waited for a free sandbox worker."""
        if isinstance(entry, ToolCallError):
            return *self._error_message(entry.name, entry.kind, entry.message), 0.0
        tool = self._tools_by_name.get(entry.name)
        if tool is None:
            names = ", ".join(sorted(self._tools_by_name)) or "(none)"
            text = error_message(ErrorKind.UNKNOWN_TOOL,
                                 f"there is no tool named {entry.name!r}; available: {names}.")
            return *self._error_message(entry.name, ErrorKind.UNKNOWN_TOOL, text), 0.0
        problems = tool.validate(entry.arguments)
        if problems:
            detail = (f"invalid arguments for {tool.name!r}: {'; '.join(problems)}. "
                      f"Its parameters are {json.dumps(tool.parameters)}.")
            text = error_message(ErrorKind.BAD_ARGUMENTS, detail)
            return *self._error_message(tool.name, ErrorKind.BAD_ARGUMENTS, text), 0.0
        try:
            output = tool.run(**entry.arguments)
        except SandboxUnavailable:
            raise  # a configuration problem, not model output
        except Exception as exc:
            detail = f"the tool {tool.name!r} failed: {type(exc).__name__}: {exc}"
            text = error_message(ErrorKind.TOOL_EXCEPTION, detail, show_format=False)
            return *self._error_message(tool.name, ErrorKind.TOOL_EXCEPTION, text), 0.0
        return self.tool_message(tool.name, output), output.error_kind, output.queue_wait_s

    def _error_message(self, name: str | None, kind: ErrorKind, text: str
                       ) -> tuple[Message, str]:
        return {"role": "tool", "name": name or "invalid_tool_call", "content": text}, kind.value

    def tool_message(self, name: str, output: ToolOutput) -> Message:
        """Render a tool's output as a tool message (text truncated, images as parts)."""
        text = truncate_output(output.text, self.max_tool_output_chars)
        if not output.images:
            return {"role": "tool", "name": name, "content": text}
        parts: list[dict[str, Any]] = [{"type": "image", "image": im} for im in output.images]
        if text:
            parts.append({"type": "text", "text": text})
        return {"role": "tool", "name": name, "content": parts}
