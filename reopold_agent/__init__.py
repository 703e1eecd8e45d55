"""reopold-agent: Relaxed On-Policy Distillation (REOPOLD) of tool-using LLM and VL agents.

The objectives live in :mod:`reopold_agent.objectives` (pure tensor functions), the episode
record in :mod:`reopold_agent.trajectory`, environments in :mod:`reopold_agent.envs`, and the
command line in :mod:`reopold_agent.cli`.

Importing the package registers the built-in environments with gymnasium, so
``import reopold_agent`` (or ``gymnasium.register_envs(reopold_agent)``) is all that
``gymnasium.make("reopold_agent/ToolMath-v0")`` needs.
"""

__version__ = "0.1.0"

from . import envs  # noqa: E402,F401  (registers the built-in environments)
