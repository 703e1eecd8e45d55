"""Stopping a training on Ctrl-C (SIGINT) or SIGTERM at a point where its state is whole.

While :class:`StopSignals` is active, either signal raises :class:`TrainingInterrupted` in the
main thread at once, except inside a :meth:`StopSignals.deferred` block (the optimiser steps and
the logging of a step, a checkpoint save), where it is remembered and raised when the block
ends. So the exception never lands between two parameter updates of one step: the model is
always at the end of its last complete step, which the trainer then saves.

The CLI installs it around a training; library callers may too. Only the main thread can
install signal handlers; elsewhere the object does nothing (signals keep their handlers).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_BASE = 128
"""Shell convention: a process stopped by signal N exits with 128 + N."""


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return EXIT_BASE + self.signum


class StopSignals:
    """Context manager turning SIGINT and SIGTERM into :class:`TrainingInterrupted`."""

    def __init__(self, signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signums = signums
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._pending: int | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def pending(self) -> int | None:
        """A signal received inside a deferred block and not raised yet."""
        return self._pending

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals until the block ends, then raise the first one received."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise TrainingInterrupted(signum)

    def _handle(self, signum: int, frame) -> None:
        if self._depth > 0:
            if self._pending is None:
                self._pending = signum
            return
        raise TrainingInterrupted(signum)
