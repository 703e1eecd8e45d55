"""``reopold-agent sft``: supervised fine-tuning of a student on whole conversations.

The conversations come from ``--data`` (a run's trajectories; the solved ones when there are
any), from the reference solutions of ``task.prompts`` items, or from the embedded task's gold
episodes. The fine-tuned student is saved as a plain model folder in the output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .commands import (
    _log,
    load_model,
    load_tokenizer,
    load_vision,
    make_env_factory,
    model_dtypes,
    resolve_model_paths,
)
from .errors import UsageError, first_line
from .train_config import TrainConfig
from .train_setup import run_device


def sft_command(config: TrainConfig, *, steps: int, data: str | None, cache_dir: Path) -> int:
    from .demo.embedded import gold_conversations
    from .run_directory import RunDirectoryError, check_writable, describe_os_error
    from .supervised import SupervisedConfig, supervised_train

    check_writable(config.output_dir)  # a file, a read-only place: one line now, not after training
    student_path, _ = resolve_model_paths(config, cache_dir, need_teacher=False)
    tokenizer = load_tokenizer(student_path)
    _, low, _ = model_dtypes(config)
    if low == torch.float16:
        raise UsageError("sft trains in float32 or bfloat16 (autocast); float16 needs loss scaling, which it does "
                         "not do: use --bf16 or --fp32")
    model = load_model(student_path, dtype=torch.float32, role="student").to(run_device(config))
    vision = load_vision(model, student_path, config)
    tools = None
    if data is not None:
        conversations = _conversations_from_file(data)
    elif config.task.prompts is not None:
        conversations, tools = _reference_conversations(config)
    else:
        conversations = gold_conversations(config.task.name, count=2000, seed=config.train.seed)
    examples = _tokenize_all(tokenizer, conversations, vision, tools=tools)
    sup = SupervisedConfig(steps=steps, lr=config.train.lr, seed=config.train.seed, warmup_steps=min(100, steps // 10),
                           autocast_dtype="bfloat16" if low == torch.bfloat16 else None)
    loss = supervised_train(model, examples, sup, pad_token_id=tokenizer.pad_token_id, vision=vision,
                            on_step=lambda s, l: _log(f"sft step {s + 1}/{steps} loss {l:.4f}") if (s + 1) % 50 == 0 else None)
    out = Path(config.output_dir)
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError as exc:
        raise RunDirectoryError(f"saving the fine-tuned student: {describe_os_error(out, exc)}") from None
    _log(f"saved the fine-tuned student to {out} (final loss {loss:.4f})")
    return 0


def _conversations_from_file(path: str) -> list[list[dict]]:
    from .trajectory_io import read_trajectories

    try:
        trajs, errors = read_trajectories(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    for err in errors:
        _log(f"skipped {err}")
    if not trajs:
        raise UsageError(f"{path} holds no readable trajectories")
    return [t.messages for t in trajs if t.reward >= 1.0] or [t.messages for t in trajs]


def _reference_conversations(config: TrainConfig) -> tuple[list[list[dict]], list[dict] | None]:
    """The ``task.prompts`` train items that carry a ``reference`` solution, as conversations
    (opening messages, then the reference with its tool calls as the raw text a model writes),
    and the tool schemas the rollouts put in the template (None unless ``rollout.render_tools``).

    Raises:
        UsageError: no train item has a reference.
    """
    from .tool_protocol import assistant_text

    env = make_env_factory(config, None, "train")()  # the python tool's sandbox is never built here
    try:
        conversations = [
            env.prompt(item) + [{"role": "assistant", "content": assistant_text(m)} if m["role"] == "assistant" else m
                                for m in env.gold_for_item(item)]
            for item in map(env.load_item, range(env.num_items())) if item.get("reference")
        ]
        tools = env.tool_schemas() if config.rollout.render_tools else None
    finally:
        env.close()
    if not conversations:
        raise UsageError(f'{config.task.prompts}: no train item has a "reference" solution to imitate; add them, or '
                         "pass --data with trajectories (a run's episodes)")
    return conversations, tools


def _tokenize_all(tokenizer: Any, conversations: list[list[dict]], vision: Any,
                  tools: list[dict] | None = None) -> list[Any]:
    """Tokenized conversations (with ``tools`` in the template); one the chat template cannot
    render is skipped with a line saying which and why (user data may hold roles or parts the
    template does not know)."""
    from jinja2 import TemplateError

    from .supervised import tokenize_conversation

    examples = []
    for number, conversation in enumerate(conversations, start=1):
        try:
            examples.append(tokenize_conversation(tokenizer, conversation, tools, vision=vision))
        except (ValueError, TemplateError) as exc:
            _log(f"skipped conversation {number}: {first_line(exc)}")
    if not examples:
        raise UsageError("no conversation could be templated for training")
    return examples
