"""Task definitions (installed as ``reopold_agent.tasks``): items, prompts, verifiers, gold turns.

No training code lives here; environments in ``reopold_agent.envs`` play these tasks.
"""

from .spec import TASKS, TaskSpec, Verdict, get_task

__all__ = ["TASKS", "TaskSpec", "Verdict", "get_task"]
