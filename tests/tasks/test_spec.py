"""Tests of tasks/spec.py: the task table and its entry points."""

import pytest
from gymnasium.envs.registration import load_env_creator

from reopold_agent.envs import ToolEnv
from reopold_agent.tasks import TASKS, get_task


def test_every_task_names_a_tool_env_class():
    for name, task in TASKS.items():
        assert task.name == name and task.env_id.startswith("reopold_agent/")
        cls = load_env_creator(task.entry_point)
        assert issubclass(cls, ToolEnv) and cls.task_name == name


def test_get_task_unknown_name_lists_known_ones():
    assert get_task("code").env_id == "reopold_agent/Code-v0"
    known = "known tasks: code, tool_math, visual_qa"
    with pytest.raises(KeyError, match=f"unknown task 'math'; {known}"):
        get_task("math")


def test_table_is_read_only():
    with pytest.raises(TypeError):
        TASKS["x"] = TASKS["code"]
