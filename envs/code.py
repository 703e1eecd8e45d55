"""``reopold_agent/Code-v0``: write a Python function; hidden tests in the sandbox decide.

Items, prompt, verifier and gold turns come from :mod:`reopold_agent.tasks.code`. The same
sandbox runs the model's python tool calls and the hidden tests of its final answer.
"""

from __future__ import annotations

from typing import Any

from reopold_agent.sandbox.base import Sandbox
from reopold_agent.tasks import code
from reopold_agent.tasks.spec import Verdict

from .arguments import at_least, seconds
from .base import Message, ToolEnv
from .tools import PythonTool, sandbox_or_default


class CodeEnv(ToolEnv):
    """Programming problems; the model may call ``python`` and answers in a code block."""

    task_name = "code"

    def __init__(
        self,
        *,
        sandbox: Sandbox | None = None,
        split: str = "train",
        data_seed: int = 0,
        train_size: int = 100_000,
        eval_size: int = 200,
        python_timeout_s: float = 10.0,
        test_timeout_s: float = code.TEST_TIMEOUT_S,
        **limits: Any,
    ) -> None:
        """Args:
            sandbox: runs the python tool and the hidden tests (must be thread safe).
                None: the env builds the default local sandbox at its first use and closes it
                in ``close()`` (see :func:`~reopold_agent.envs.tools.sandbox_or_default`).
            split: ``"train"`` or ``"eval"``.
            data_seed: seed of the generated dataset.
            train_size: number of generated train items (indices).
            eval_size: number of generated eval items (indices).
            python_timeout_s: wall-clock limit of one python call.
            test_timeout_s: wall-clock limit of the hidden-test run of a final answer.
            **limits: :class:`ToolEnv` limits (``max_tool_rounds``, ...).
        """
        train_size, eval_size = at_least("train_size", train_size, 1), at_least("eval_size", eval_size, 1)
        python_timeout_s = seconds("python_timeout_s", python_timeout_s, optional=True)
        test_timeout_s = seconds("test_timeout_s", test_timeout_s)
        sandbox, owned = sandbox_or_default(sandbox, "reopold_agent/Code-v0")
        super().__init__(tools=[PythonTool(sandbox, timeout_s=python_timeout_s)], split=split,
                         sandbox=sandbox, owns_sandbox=owned, **limits)
        self.data_seed = data_seed
        self.test_timeout_s = test_timeout_s
        self.size = train_size if split == "train" else eval_size

    def num_items(self) -> int:
        return self.size

    def load_item(self, index: int) -> dict[str, Any]:
        return code.make_item(self.split, index, seed=self.data_seed)

    def item_from_options(self, item: dict[str, Any]) -> dict[str, Any]:
        missing = {"fn", "prompt", "tests", "expected"} - set(item)
        if missing:
            raise ValueError(f'a code item needs keys {sorted(missing)} (expected outputs as '
                             '[["ok", value], ...])')
        return {"answer": "", **item}

    def item_info(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"problem": item.get("problem"), "num_tests": len(item["tests"])}

    def prompt(self, item: dict[str, Any]) -> list[Message]:
        return code.prompt_messages(item)

    def verify(self, item: dict[str, Any], text: str) -> Verdict:
        return code.verify(item, text, self.sandbox, self.test_timeout_s)

    def gold_for_item(self, item: dict[str, Any]) -> list[Message]:
        return code.gold_turns(item)
