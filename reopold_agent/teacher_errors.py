"""Errors of teacher scoring (standard library only, so that the CLI can catch them before heavy imports).

Each message is one line. A :class:`TeacherError` raised while a step is scored stops the run
before that step's update: nothing of the step is written, and ``--resume`` continues from the
last checkpoint once the teacher is back.
"""


class TeacherError(RuntimeError):
    """The teacher could not score a step."""


class TeacherUnavailable(TeacherError):
    """The teacher server did not answer usefully within the bounded retries."""


class TeacherProtocolError(TeacherError):
    """A backend answered with the wrong number of log-probs, or non-finite ones where they count."""


class TeacherIdMismatch(TeacherError):
    """The teacher scored (or tokenizes to) other ids than the student's."""
