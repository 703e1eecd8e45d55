"""Checks of a command's inputs that need no heavy imports: model folders, data files, and
the module named in ``--env``.

The CLI runs them right after the configuration is read and validated, before torch and
transformers load, so that a typo costs a fraction of a second. Each problem raises
``reopold_agent.errors.UsageError`` (one line, exit code 2).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import UsageError
from .train_config import TrainConfig


def check_inputs(config: TrainConfig, *, command: str, data: str | None = None, teacher: bool = False) -> None:
    """Check what ``command`` (``train``, ``sft`` or ``eval``) will read, in order: the models
    named in the configuration (the teacher for ``train`` and with ``teacher``), the ``--data``
    file, and the ``--env`` module.

    Raises:
        UsageError: a model folder or data file that does not exist, an ``--env`` module
            that cannot be imported, or ``logging.wandb`` without the wandb package.
    """
    if command == "train":
        check_logging(config)
    check_model_path(config.model.student, "model.student")
    if teacher or (command == "train" and config.objective.name != "grpo"):
        check_model_path(config.model.teacher, "model.teacher")
    if data is not None:
        check_file(data, "--data")
    if config.task.prompts is not None:
        if not config.task.prompts.startswith("hf:"):
            check_file(config.task.prompts, "task.prompts")
        working_directory_on_path()  # tools and verifier named as module:function, as --env modules are
    import_env_module(config.task.env_id)


def check_logging(config: TrainConfig) -> None:
    """Refuse ``logging.wandb: true`` where the ``wandb`` package is not installed."""
    from .wandb_logging import WandbMissing, check_wandb_installed

    try:
        check_wandb_installed(config.logging)
    except WandbMissing as exc:
        raise UsageError(str(exc)) from None


def names_local_folder(value: str) -> bool:
    """True when ``value`` can only mean a folder on this machine, not a Hugging Face repo id
    (``name`` or ``namespace/name``): an absolute path, one starting with ``.`` or ``~``, more
    than one ``/``, or ``a/b`` where the folder ``a`` exists here."""
    if value.startswith(("/", "~", "./", "../")) or value in (".", ".."):
        return True
    parts = value.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def check_model_path(value: str | None, key: str) -> None:
    """Refuse a model that names a local folder which does not exist (or is a file).

    Hub ids (``Qwen/Qwen2.5-1.5B-Instruct``) pass: whether the hub has them is up to the loader.
    """
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UsageError(f"{key}: not a folder: {value} (a model is a folder saved by save_pretrained)")
    if names_local_folder(value):
        raise UsageError(f"{key}: no such folder: {value}")


def check_file(value: str, flag: str) -> None:
    """Refuse a path that is not a readable file."""
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{flag}: no such file: {value}")
    if not path.is_file():
        raise UsageError(f"{flag}: not a file: {value}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag}: cannot read {value}: permission denied")


def working_directory_on_path() -> str:
    """Put the working directory first on ``sys.path`` as ``python -m`` would (a console script
    puts its own folder there instead); returns it."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def import_env_module(env_id: str | None) -> None:
    """Import the module of a ``module:Env-v0`` id as ``python -m`` would: the working directory
    first on ``sys.path`` (a console script puts its own folder there instead), so that
    ``--env my_module:MyEnv-v0`` finds ``./my_module.py``. Importing it registers the
    environment with gymnasium.

    Raises:
        UsageError: the module cannot be imported.
    """
    module, _, _ = (env_id or "").rpartition(":")
    if not module:
        return
    cwd = working_directory_on_path()
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"cannot make environment {env_id!r}: cannot import module {module!r}: {exc} "
                         f"(looked in the working directory {cwd} and the installed packages)") from None
