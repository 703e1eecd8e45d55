"""The vLLM tests run in the separate environment that holds vLLM's CPU build (``.ci/run`` builds
it); elsewhere each module skips itself. vLLM reads its environment when it is imported, so the
settings the CLI applies are applied here first."""

import os

from reopold_agent.rollout.vllm_backend import DEFAULT_ENVIRONMENT, PROCESS_ENVIRONMENT

os.environ.update(PROCESS_ENVIRONMENT)
for key, value in DEFAULT_ENVIRONMENT.items():
    os.environ.setdefault(key, value)
