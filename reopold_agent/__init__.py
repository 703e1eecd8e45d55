"""reopold-agent: Relaxed On-Policy Distillation (REOPOLD) of tool-using LLM and VL agents.

The objectives live in :mod:`reopold_agent.objectives` (pure tensor functions), the episode
record in :mod:`reopold_agent.trajectory`, environments in :mod:`reopold_agent.envs`, and the
command line in :mod:`reopold_agent.cli`.
"""

__version__ = "0.1.0"
