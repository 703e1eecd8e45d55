"""Errors the command line reports as one line, and how a library error is quoted in one
(standard library only).

Every command module (``commands``, ``eval_command``, ``sft_command``, ``train_setup``,
``preflight``, ``teacher_setup``, ``replay.commands``) raises them and ``cli`` catches them, so
none of them imports the CLI.
"""

from __future__ import annotations

__all__ = ["UsageError", "first_line"]


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, or its type's name when it has none: how a
    library error is quoted in a one-line report."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
