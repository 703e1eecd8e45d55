"""Cases run in every process of a CPU (gloo) launch; tests/test_cross_process.py starts them.

    python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_cases.py OUT_DIR [--unwrapped]

Each process writes ``OUT_DIR/rank{r}.pt``: what it gathered, and the gradients and weights
after one policy update on its share of a fixed global batch. ``--unwrapped`` skips
``accelerator.prepare`` (no engine synchronises the gradients): the test's negative control.
Run with one process, the same script gives the single-process reference on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)

from accelerate import Accelerator  # noqa: E402

from reopold_agent.batching import collate  # noqa: E402
from reopold_agent.cross_process import EngineUpdate, gather_values  # noqa: E402
from reopold_agent.objectives.config import ReopoldConfig  # noqa: E402
from reopold_agent.policy_update import policy_update  # noqa: E402
from reopold_agent.sequence_scoring import SequenceScorer  # noqa: E402
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig  # noqa: E402
from tests.test_policy_update import _trajectories  # noqa: E402
from tests import tiny  # noqa: E402

ROWS = 8
"""Rows of the global batch; each of W processes trains on rows ``rank::W``."""
RAGGED = {0: [1.0, float("nan"), float("-inf")], 1: [5.0]}
"""Values each rank contributes to the gather check (ragged lengths, NaN and infinity)."""


def update_on_share(accelerator: Accelerator, *, wrap: bool) -> dict[str, dict[str, torch.Tensor]]:
    """One REOPOLD refinement-phase update (SGD, lr 0.1, no clipping in effect) on this
    process's share of the global batch, in two micro-batches; returns its gradients and weights."""
    model = tiny.model("nano", seed=1)
    batch = collate(_trajectories(model, tiny.model("nano", seed=2), n=ROWS), pad_token_id=0)
    mine = batch.select(list(range(accelerator.process_index, ROWS, accelerator.num_processes)))
    captured: dict[str, torch.Tensor] = {}

    class CaptureSGD(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return super().step(closure)

    optimizer = CaptureSGD(model.parameters(), lr=0.1)
    scorer = SequenceScorer(model)
    if wrap:
        scorer, optimizer = accelerator.prepare(scorer, optimizer)
    update = EngineUpdate(accelerator, scorer)
    settings = ObjectiveConfig(name="reopold", switch_fraction=None, reopold=ReopoldConfig(switch_step=0, beta=0.5))
    micro_rows = max(mine.num_rows // 2, 1)
    policy_update(scorer, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), mine, step=3,
                  settings=settings, optim=TrainLoopConfig(micro_batch_rows=micro_rows, mini_batches=1, grad_clip=1e9),
                  total_steps=10, backward=update.backward, clip_grad=update.clip_gradients, gather=update.gather,
                  no_sync=update.no_sync)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"grads": captured, "weights": weights}


def main(out: Path, *, wrap: bool) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    values = torch.tensor(RAGGED.get(rank, []), dtype=torch.float32)
    result = {"gathered": gather_values(values, accelerator), **update_on_share(accelerator, wrap=wrap)}
    torch.save(result, out / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), wrap="--unwrapped" not in sys.argv[2:])
