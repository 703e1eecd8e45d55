"""Errors the command line reports as one line (standard library only).

Every command module (``commands``, ``eval_command``, ``preflight``, ``teacher_setup``,
``replay.commands``) raises them and ``cli`` catches them, so none of them imports the CLI.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""
