"""``reopold_agent/ToolMath-v0``: arithmetic and word problems with a sandboxed python tool.

Items, prompt, verifier and gold turns come from :mod:`reopold_agent.tasks.tool_math`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reopold_agent.sandbox.base import Sandbox
from reopold_agent.tasks import tool_math
from reopold_agent.tasks.spec import Verdict

from .arguments import at_least, choices, seconds
from .base import Message, ToolEnv
from .tools import PythonTool, sandbox_or_default


class ToolMathEnv(ToolEnv):
    """Math problems; the model calls ``python`` and answers in ``\\boxed{}``."""

    task_name = "tool_math"

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        split: str = "train",
        data_seed: int = 0,
        levels: tuple[int, ...] = tool_math.LEVELS,
        data_path: str | Path | None = None,
        train_size: int = 100_000,
        eval_size: int = 200,
        python_timeout_s: float = 10.0,
        **limits: Any,
    ) -> None:
        """Args:
            sandbox: runs the python tool (shared by many envs; must be thread safe).
                None: the env builds the default local sandbox at its first use and closes it
                in ``close()`` (see :func:`~reopold_agent.envs.tools.sandbox_or_default`).
            split: ``"train"`` or ``"eval"``.
            data_seed: seed of the generated dataset.
            levels: difficulties (1-3) to generate.
            data_path: a JSON Lines file of ``{"question", "answer"}`` replacing generated
                items for this env's split.
            train_size: number of generated train items (indices).
            eval_size: number of generated eval items (indices).
            python_timeout_s: wall-clock limit of one python call.
            **limits: :class:`ToolEnv` limits (``max_tool_rounds``, ...).
        """
        levels = choices("levels", levels, tool_math.LEVELS)
        train_size, eval_size = at_least("train_size", train_size, 1), at_least("eval_size", eval_size, 1)
        python_timeout_s = seconds("python_timeout_s", python_timeout_s, optional=True)
        sandbox, owned = sandbox_or_default(sandbox, "reopold_agent/ToolMath-v0")
        super().__init__(tools=[PythonTool(sandbox, timeout_s=python_timeout_s)], split=split,
                         sandbox=sandbox, owns_sandbox=owned, **limits)
        self.data_seed = data_seed
        self.levels = tuple(levels)
        self.data = tool_math.load_items(data_path) if data_path is not None else None
        self.size = train_size if split == "train" else eval_size

    def num_items(self) -> int:
        return len(self.data) if self.data is not None else self.size

    def load_item(self, index: int) -> dict[str, Any]:
        if self.data is not None:
            return self.data[index]
        return tool_math.make_item(self.split, index, seed=self.data_seed, levels=self.levels)

    def item_from_options(self, item: dict[str, Any]) -> dict[str, Any]:
        return tool_math.item_from_dict(super().item_from_options(item))

    def item_info(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"difficulty": item.get("difficulty")}

    def prompt(self, item: dict[str, Any]) -> list[Message]:
        return tool_math.prompt_messages(item)

    def verify(self, item: dict[str, Any], text: str) -> Verdict:
        return tool_math.verify(item, text)

    def gold_for_item(self, item: dict[str, Any]) -> list[Message]:
        return tool_math.gold_turns(item)
