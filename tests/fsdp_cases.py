"""An FSDP2 update, checkpoint and resume in every process of a CPU (gloo) launch;
tests/test_sharded_training.py starts it.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_cases.py OUT_DIR

With two processes the student's scorer goes through accelerate's FSDP2 preparation; with one,
the same script gives the unsharded single-process reference on the whole batch. Each process
writes ``OUT_DIR/rank{r}.pt`` (full gradients and weights after the update, the sampler copy's
weights after its sync, and what a resumed student holds); the checkpoint goes to
``OUT_DIR/run``.

accelerate (1.16) chooses FSDP only for a GPU kind of process group: with CPU processes it
ignores the FSDP plugin and runs MULTI_CPU (DDP). torch's FSDP2 itself runs on the CPU over
gloo, so :func:`fsdp_accelerator` sets the distributed type in accelerate's shared state to
FSDP after the plugin is built; everything after that (accelerate's ``fsdp2_prepare_model``
and its wrapping policy, the engine's hooks and reduce-scatter, the state-dict collectives) is
what a GPU run executes.
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
from reopold_agent.checkpoint import load_newest_loadable, save_checkpoint  # noqa: E402
from reopold_agent.cross_process import EngineUpdate  # noqa: E402
from reopold_agent.objectives.config import ReopoldConfig  # noqa: E402
from reopold_agent.policy_update import policy_update  # noqa: E402
from reopold_agent.sequence_scoring import SequenceScorer  # noqa: E402
from reopold_agent.sharded_sampling import ShardedStudentSampler  # noqa: E402
from reopold_agent.sharded_state import gather_full_optimizer_state, gather_full_weights, is_sharded  # noqa: E402
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig  # noqa: E402
from tests import tiny  # noqa: E402
from tests.test_policy_update import _trajectories  # noqa: E402

ROWS = 8
"""Rows of the global batch; each of W processes trains on rows ``rank::W``."""


def fsdp_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An ``Accelerator`` over this launch's CPU processes that prepares models with FSDP2
    (transformer-layer wrapping), as ``accelerate launch`` with an FSDP2 config does on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, mixed_precision=mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    assert accelerator.is_fsdp2
    return accelerator


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach().clone()


def _student(accelerator: Accelerator, seed: int):
    """(student, prepared scorer, prepared SGD with momentum, scheduler)."""
    model = tiny.model("nano", seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scorer, optimizer = accelerator.prepare(SequenceScorer(model), optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, scorer, optimizer, scheduler


def _update(accelerator, model, scorer, optimizer, scheduler, batch, captured: dict) -> None:
    """One REOPOLD refinement-phase update on this process's share, in two micro-batches."""
    mine = batch.select(list(range(accelerator.process_index, ROWS, accelerator.num_processes)))
    update = EngineUpdate(accelerator, scorer)
    settings = ObjectiveConfig(name="reopold", switch_fraction=None, reopold=ReopoldConfig(switch_step=0, beta=0.5))

    def clip(max_norm: float) -> torch.Tensor:  # runs after backward, before the optimiser step
        captured.update({n: _full(p.grad) for n, p in model.named_parameters() if p.grad is not None})
        return update.clip_gradients(max_norm)

    policy_update(scorer, optimizer, scheduler, mine, step=3, settings=settings,
                  optim=TrainLoopConfig(micro_batch_rows=max(mine.num_rows // 2, 1), mini_batches=1, grad_clip=1e9),
                  total_steps=10, backward=update.backward, clip_grad=clip, gather=update.gather,
                  no_sync=update.no_sync)


def main(out: Path) -> None:
    accelerator = fsdp_accelerator() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else Accelerator(cpu=True)
    rank = accelerator.process_index
    model, scorer, optimizer, scheduler = _student(accelerator, seed=1)
    sampler = ShardedStudentSampler(tiny.model("nano", seed=1), pad_token_id=0)
    batch = collate(_trajectories(tiny.model("nano", seed=1), tiny.model("nano", seed=2), n=ROWS), pad_token_id=0)
    grads: dict[str, torch.Tensor] = {}
    _update(accelerator, model, scorer, optimizer, scheduler, batch, grads)
    sharded = is_sharded(model)
    weights = gather_full_weights(model, main_only=False) if sharded else model.state_dict()
    result = {"sharded": sharded, "grads": grads, "weights": {k: _full(v) for k, v in weights.items()}}
    if sharded:  # gathers into the copy; the single-process reference samples from the student itself
        sampler.sync_weights(model)
        result["sampler_weights"] = {k: v.detach().clone() for k, v in sampler.model.state_dict().items()}
        saved_weights = gather_full_weights(model, main_only=True)
        saved_optimizer = gather_full_optimizer_state(model, optimizer)
    else:
        saved_weights = saved_optimizer = None
    if accelerator.is_main_process:
        save_checkpoint(out / "run", 1, model=model, tokenizer=tiny.tokenizer(), optimizer=optimizer,
                        scheduler=scheduler, extra={}, weights=saved_weights, optimizer_state=saved_optimizer)
    accelerator.wait_for_everyone()

    # resume into a student of other weights: the checkpoint's weights and momentum come back,
    # and the next update equals the uninterrupted student's
    other, other_scorer, other_optimizer, other_scheduler = _student(accelerator, seed=5)
    load_newest_loadable(out / "run", model=other, optimizer=other_optimizer, scheduler=other_scheduler,
                         log=lambda message: None)
    resumed = gather_full_weights(other, main_only=False) if sharded else other.state_dict()
    result["resumed_weights"] = {k: _full(v) for k, v in resumed.items()}
    for name, student, opt, scr, sch in (("continued", model, optimizer, scorer, scheduler),
                                         ("resumed", other, other_optimizer, other_scorer, other_scheduler)):
        _update(accelerator, student, scr, opt, sch, batch, {})
        after = gather_full_weights(student, main_only=False) if sharded else student.state_dict()
        result[f"{name}_after_second"] = {k: _full(v) for k, v in after.items()}
    torch.save(result, out / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
