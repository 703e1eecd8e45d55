"""Fixtures for environment tests: a subprocess sandbox double (see sandbox_double.py)."""

import pytest
from tests.envs.sandbox_double import SubprocessSandbox


@pytest.fixture(scope="session")
def sandbox() -> SubprocessSandbox:
    return SubprocessSandbox(timeout_s=10.0)
