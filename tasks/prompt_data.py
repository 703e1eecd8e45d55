"""Prompts from a user's dataset: JSON Lines (or a Hugging Face ``datasets`` split) turned into
items for :class:`reopold_agent.envs.prompt_dataset.PromptDatasetEnv`.

One JSON object per line; blank lines are skipped::

    {"prompt": "How many metres are 3.5 miles?", "answer": "5632.704"}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "answer": "4", "split": "eval"}
    {"prompt": "17*23?", "answer": "391",
     "reference": [{"role": "assistant", "content": "\\\\boxed{391}"}]}

* ``prompt`` (a string: the user's message) or ``messages`` (the opening chat messages, ending
  with a user message) is required;
* ``system``: a system message put before ``prompt`` (else the environment's default);
* ``answer`` (string or number): what the exact-match verifier compares the final reply with;
* ``split``: ``train`` (the default) or ``eval``;
* ``reference``: assistant (and tool) messages that solve the prompt, for ``reopold-agent sft``;
  assistant messages may carry OpenAI-style ``tool_calls``;
* any other key is kept in the item (a custom verifier sees it).

A bad line raises :class:`~reopold_agent.tasks.data.TaskDataError` naming ``file:line`` and
the reason.
"""

from __future__ import annotations

from typing import Any, Iterable

from .answers import answers_match, extract_boxed
from .data import TaskDataError, read_jsonl
from .spec import Verdict

ROLES = ("system", "user", "assistant", "tool")
REFERENCE_ROLES = ("assistant", "tool")
HF_PREFIX = "hf:"
"""``task.prompts: hf:NAME`` (or ``hf:NAME:SPLIT``) loads a Hugging Face dataset split."""


def load_prompt_items(source: str) -> list[dict[str, Any]]:
    """The checked items of a JSON Lines file, or of a ``datasets`` split for ``hf:NAME[:SPLIT]``.

    Raises:
        TaskDataError: a missing or empty file, a bad line (``file:line: reason``), or a
            ``hf:`` source without ``datasets`` installed.
    """
    if source.startswith(HF_PREFIX):
        return load_hf_items(source[len(HF_PREFIX):])
    return [prompt_item(row, f"{source}:{row.pop('line')}") for row in read_jsonl(source, {})]


def load_hf_items(spec: str) -> list[dict[str, Any]]:
    """Items of the Hugging Face dataset ``NAME`` (split ``train``) or ``NAME:SPLIT``, read with
    ``datasets.load_dataset`` (which finds local folders and cached hub datasets)."""
    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise TaskDataError(f"{HF_PREFIX}{spec}: reading a Hugging Face dataset needs the datasets library "
                            "(pip install datasets); or export it to JSON Lines") from None
    try:
        rows = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many kinds for a name it cannot find
        raise TaskDataError(f"{HF_PREFIX}{spec}: cannot load it: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    items = [prompt_item(dict(row), f"{HF_PREFIX}{spec}[{number}]") for number, row in enumerate(rows)]
    if not items:
        raise TaskDataError(f"{HF_PREFIX}{spec} has no rows")
    return items


def prompt_item(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One checked item: the row with ``messages`` (the opening), ``answer`` (a string, "" when
    there is none), ``split`` and ``reference`` filled in.

    Raises:
        TaskDataError: ``where: reason`` for a row without a usable prompt, or with a wrong
            ``answer``, ``split``, ``system`` or ``reference``.
    """
    def fail(reason: str) -> TaskDataError:
        return TaskDataError(f"{where}: {reason}")

    if not isinstance(row, dict):
        raise fail(f"expected a JSON object, got {type(row).__name__}")
    has_prompt, has_messages = row.get("prompt") is not None, row.get("messages") is not None
    if has_prompt == has_messages:
        raise fail('needs exactly one of "prompt" (a string) or "messages" (a list of chat messages)')
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise fail(f'"system" must be a string, got {type(system).__name__}')
    if has_prompt:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise fail('"prompt" must be a non-empty string')
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": row["prompt"]}]
    else:
        if system is not None:
            raise fail('"system" goes with "prompt"; put a system message in "messages" instead')
        messages = _messages(row["messages"], '"messages"', fail, ROLES)
        if messages[-1]["role"] != "user":
            raise fail(f'"messages" must end with a user message, got {messages[-1]["role"]!r} '
                       '(put a solution in "reference")')
    answer = row.get("answer", "")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise fail(f'"answer" must be a string or a number, got {type(answer).__name__}')
    split = row.get("split", "train")
    if split not in ("train", "eval"):
        raise fail(f'"split" must be "train" or "eval", got {split!r}')
    reference = row.get("reference")
    if reference is not None:
        reference = _messages(reference, '"reference"', fail, REFERENCE_ROLES)
        if reference[-1]["role"] != "assistant":
            raise fail('"reference" must end with the assistant\'s final answer')
    return {**row, "messages": messages, "answer": str(answer), "split": split, "reference": reference}


def _messages(value: Any, name: str, fail: Any, roles: Iterable[str]) -> list[dict[str, Any]]:
    """``value`` checked as a non-empty list of ``{"role", "content"}`` chat messages."""
    roles = tuple(roles)
    if not isinstance(value, list) or not value:
        raise fail(f"{name} must be a non-empty list of chat messages")
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise fail(f"{name}[{number}] must be an object with role and content")
        if message.get("role") not in roles:
            raise fail(f"{name}[{number}] has role {message.get('role')!r}; expected one of {', '.join(roles)}")
        content = message.get("content")
        if not isinstance(content, str) and not (message["role"] == "assistant" and content is None
                                                 and message.get("tool_calls")):
            raise fail(f"{name}[{number}] needs a string content")
    return [dict(m) for m in value]


def exact_match(item: dict[str, Any], text: str) -> Verdict:
    """1.0 when the final reply's answer equals ``item["answer"]``: the last ``\\boxed{}`` when
    there is one, else the whole reply; numbers compare by value, text after normalising case,
    spaces and punctuation (:func:`~reopold_agent.tasks.answers.answers_match`). An item without
    an answer always scores 0."""
    if not item["answer"]:
        return Verdict(0.0, None, "the item has no answer to compare with")
    got = extract_boxed(text)
    got = got if got is not None else text.strip()
    ok = answers_match(got, item["answer"])
    return Verdict(1.0 if ok else 0.0, got, "correct" if ok else "different answer")


def as_verdict(result: Any) -> Verdict:
    """A custom verifier's return value as a :class:`Verdict`: a ``Verdict`` as it is, a bool or
    number as the reward.

    Raises:
        TypeError: any other value.
    """
    if isinstance(result, Verdict):
        return result
    if isinstance(result, (bool, int, float)):
        return Verdict(float(result), None, "custom verifier")
    raise TypeError(f"a verifier returns a Verdict, a bool or a number, got {type(result).__name__}")
