"""Gymnasium tool environments (installed as ``reopold_agent.envs``).

Importing this package (which ``import reopold_agent`` does) registers the built-ins
(``reopold_agent/ToolMath-v0``, ``reopold_agent/Code-v0``, ``reopold_agent/VisualQA-v0``, and the
generic ``reopold_agent/PromptDataset-v0`` over a user's prompts) with gymnasium. See ``docs/environments.md`` for the contract and how to add an environment.
"""

from reopold_agent.tasks.spec import Verdict

from .base import Message, ToolEnv
from .batch import StepOutcome, step_concurrently
from .callable_tools import FunctionTool
from .checker import ToolEnvCheckError, check_opening, check_tool_env
from .info import EnvInfoError, ResetInfo, StepInfo
from .registry import (
    ENTRY_POINT_GROUP,
    EnvInfo,
    ToolInfo,
    UnknownEnvError,
    list_envs,
    load_plugin_envs,
    make_env,
    register_builtin_envs,
)
from .prompt_dataset import PromptDatasetEnv, register_prompt_dataset_env
from .tools import PythonTool, Tool, ToolOutput, validate_arguments

register_builtin_envs()
register_prompt_dataset_env()

__all__ = [
    "ENTRY_POINT_GROUP",
    "EnvInfo",
    "EnvInfoError",
    "FunctionTool",
    "Message",
    "PromptDatasetEnv",
    "PythonTool",
    "ResetInfo",
    "StepInfo",
    "StepOutcome",
    "Tool",
    "ToolEnv",
    "ToolEnvCheckError",
    "ToolInfo",
    "ToolOutput",
    "UnknownEnvError",
    "Verdict",
    "check_opening",
    "check_tool_env",
    "list_envs",
    "load_plugin_envs",
    "make_env",
    "register_builtin_envs",
    "register_prompt_dataset_env",
    "step_concurrently",
    "validate_arguments",
]
