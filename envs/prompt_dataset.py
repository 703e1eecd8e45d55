"""``reopold_agent/PromptDataset-v0``: a generic tool environment over a user's own prompts.

Distilling on one's own prompts needs no environment class: the items come from a JSON Lines
file or a Hugging Face ``datasets`` split (format: :mod:`reopold_agent.tasks.prompt_data`), the
tools are Python callables or the sandboxed ``python`` tool
(:mod:`reopold_agent.envs.callable_tools`), and the verifier is optional: a ``module:function``
called as ``verifier(item, final_text)`` (returning a ``Verdict``, a bool or a number in [0, 1]),
else an exact match of the final answer against the item's ``answer`` (an item without one
scores 0; REOPOLD learns from the teacher's log-probs, not from this reward).

The ``train`` split holds the items without ``"split": "eval"``; the ``eval`` split holds those
with it and the items of ``eval_prompts``. When no item is held out, evaluation plays the train
items (:attr:`PromptDatasetEnv.eval_is_train` says so).

``reopold-agent train --prompts data.jsonl`` (or ``task.prompts``) plays this environment, with
its other arguments from ``task.env_kwargs`` (``tools``, ``verifier``, ``system_prompt``,
``eval_prompts``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium

from reopold_agent.tasks.prompt_data import as_verdict, exact_match, load_prompt_items, prompt_item
from reopold_agent.tasks.spec import Verdict

from .base import Message, ToolEnv
from .callable_tools import import_object, resolve_tools
from .tools import sandbox_or_default

ENV_ID = "reopold_agent/PromptDataset-v0"


def register_prompt_dataset_env() -> None:
    """Register :data:`ENV_ID` with gymnasium (idempotent)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="reopold_agent.envs.prompt_dataset:PromptDatasetEnv")


class PromptDatasetEnv(ToolEnv):
    """Prompts from a JSON Lines file or a datasets split, with callable tools and an optional verifier."""

    task_name = "prompts"

    def __init__(
        self,
        *,
        prompts: str | None = None,
        items: Sequence[dict[str, Any]] | None = None,
        eval_prompts: str | None = None,
        tools: Sequence[Any] = (),
        verifier: str | Callable[[dict[str, Any], str], Any] | None = None,
        system_prompt: str | None = None,
        split: str = "train",
        sandbox: Any = None,
        python_timeout_s: float | None = 10.0,
        **limits: Any,
    ) -> None:
        """Args:
            prompts: the JSON Lines file, or ``hf:NAME[:SPLIT]`` for a ``datasets`` split.
            items: the items of ``prompts`` already read with
                :func:`~reopold_agent.tasks.prompt_data.load_prompt_items` (the trainer reads
                the file once for all its environments); give ``prompts`` or ``items``.
            eval_prompts: a second source whose items all belong to the eval split.
            tools: ``"python"``, ``"module:name"`` references, mappings or tool objects.
            verifier: ``"module:function"`` or a callable ``(item, final_text)``; None: exact
                match against the item's ``answer``.
            system_prompt: a system message for items that bring none.
            split: ``"train"`` or ``"eval"``.
            sandbox: runs the ``python`` tool (None: the default local sandbox, built at the
                first call and closed by ``close()``).
            python_timeout_s: wall-clock limit of one ``python`` call.
            **limits: :class:`ToolEnv` limits (``max_tool_rounds``, ...).

        Raises:
            ValueError: neither or both of ``prompts`` and ``items``, a bad line of a file
                (``file:line: reason``), a split without items, or a tool or verifier that
                cannot be found.
        """
        if (prompts is None) == (items is None):
            raise ValueError("PromptDatasetEnv needs exactly one of prompts= (a JSON Lines file or hf:NAME) or items=")
        uses_python = "python" in list(tools)
        sandbox, owned = sandbox_or_default(sandbox, ENV_ID) if uses_python else (sandbox, False)
        super().__init__(tools=resolve_tools(tools, sandbox=sandbox, python_timeout_s=python_timeout_s),
                         split=split, sandbox=sandbox, owns_sandbox=owned, **limits)
        every = list(items) if items is not None else load_prompt_items(prompts)
        if eval_prompts is not None:
            every += [{**item, "split": "eval"} for item in load_prompt_items(eval_prompts)]
        train = [item for item in every if item["split"] == "train"]
        held_out = [item for item in every if item["split"] == "eval"]
        if not train:
            raise ValueError(f"{prompts or 'items'}: no train items (every item has \"split\": \"eval\")")
        self.eval_is_train = not held_out
        """True when nothing is held out, so the eval split replays the train items."""
        self.data = train if split == "train" or self.eval_is_train else held_out
        self.system_prompt = system_prompt
        if isinstance(verifier, str):
            verifier = import_object(verifier, "verifier")
        if verifier is not None and not callable(verifier):
            raise ValueError(f"verifier must be a function (item, text) or module:function, got {verifier!r}")
        self.verifier = verifier

    def num_items(self) -> int:
        return len(self.data)

    def load_item(self, index: int) -> dict[str, Any]:
        return self.data[index]

    def item_from_options(self, item: dict[str, Any]) -> dict[str, Any]:
        return prompt_item(dict(item), 'options["item"]')

    def prompt(self, item: dict[str, Any]) -> list[Message]:
        messages = [dict(m) for m in item["messages"]]
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def verify(self, item: dict[str, Any], text: str) -> Verdict:
        if self.verifier is None:
            return exact_match(item, text)
        return as_verdict(self.verifier(item, text))

    def gold_for_item(self, item: dict[str, Any]) -> list[Message]:
        """The item's ``reference`` messages (the solution ``reopold-agent sft`` imitates)."""
        if not item.get("reference"):
            raise NotImplementedError(f"item {item.get('id', '')!r} has no reference solution")
        return [dict(m) for m in item["reference"]]
