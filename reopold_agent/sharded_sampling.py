"""Sampling for a student that FSDP shards: from a full copy, refreshed after every update.

A sharded student cannot generate as it is: its layers gather their weights in hooks that are
collectives, and processes decode different numbers of tokens, so their collectives would not
line up (a hang). The sampler therefore keeps a full, unsharded copy of the student on each
process and generates from it without any collective; after each update the trainer calls
``sync_weights``, which gathers the new full weights into the copy (one collective, at the same
point on every process). The copy costs one full student in the student's dtype per process,
on top of the shards.
"""

from __future__ import annotations

from typing import Any

import torch

from .rollout.hf_backend import HFGenerationBackend
from .sharded_state import gather_full_weights


class ShardedStudentSampler(HFGenerationBackend):
    """:class:`~reopold_agent.rollout.hf_backend.HFGenerationBackend` over a full copy of a
    sharded student.

    Args:
        model: the full copy to sample from (made before the student was sharded, so it starts
            equal); the other keyword arguments are ``HFGenerationBackend``'s.
    """

    def sync_weights(self, model: Any) -> None:
        """Gather the sharded ``model``'s full weights into the copy (a collective)."""
        weights = gather_full_weights(model, main_only=False)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            self.model.load_state_dict({k: v.to(device) for k, v in weights.items()})
