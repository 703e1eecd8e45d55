"""Which host directories the local sandbox hides, and which interpreter prefixes it binds back."""

from __future__ import annotations

import os

from reopold_agent.sandbox import SandboxConfig
from reopold_agent.sandbox.visibility import (
    exposed_paths, hidden_paths, home_directory, interpreter_prefixes)


def test_tilde_is_the_callers_home_and_duplicates_go():
    home = home_directory()
    hidden = hidden_paths(SandboxConfig(hide_paths=("~", "/run", "/run/", "/srv")))
    assert hidden == [p for p in (home, "/run", "/srv") if p is not None]


def _venv(root, name="venv"):
    """A virtual-environment layout: bin/python3 -> the base interpreter, pyvenv.cfg."""
    base = root / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3.12").write_text("")
    venv = root / name
    (venv / "bin").mkdir(parents=True)
    os.symlink(base / "bin" / "python3.12", venv / "bin" / "python3")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\ninclude-system-site-packages = false\n")
    return venv, base


def test_prefixes_follow_the_symlinks_and_the_venv_home(tmp_path):
    venv, base = _venv(tmp_path)
    assert interpreter_prefixes(str(venv / "bin" / "python3")) == [str(venv), str(base)]


def test_only_prefixes_under_hidden_directories_are_exposed(tmp_path):
    venv, base = _venv(tmp_path)
    python = str(venv / "bin" / "python3")
    assert exposed_paths([str(tmp_path)], python) == [str(venv), str(base)]
    assert exposed_paths([str(venv)], python) == [str(venv / "bin")]  # never a whole hidden dir
    assert exposed_paths(["/srv"], python) == []
    assert exposed_paths(["/home"], "/usr/bin/python3") == []
