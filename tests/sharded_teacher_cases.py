"""A teacher sharded with FSDP2 scoring in every process of a CPU (gloo) launch;
tests/test_sharded_teacher.py starts it.

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_teacher_cases.py OUT_DIR

Each process scores rows of its own (other lengths, other counts per batch than the other
process) with the sharded teacher and with a whole copy, and writes both, with how many of the
teacher's parameters it holds, to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)

from accelerate import Accelerator  # noqa: E402

from reopold_agent.sharded_teacher import shard_teacher, teacher_mesh  # noqa: E402
from reopold_agent.teacher import TeacherScorer  # noqa: E402
from reopold_agent.teacher_scoring import ScoringRow  # noqa: E402
from tests import tiny  # noqa: E402


def _rows(rank: int) -> list[ScoringRow]:
    g = torch.Generator().manual_seed(100 + rank)
    lengths = [7, 12, 5, 9, 15, 6] if rank == 0 else [20, 4, 11, 8, 10, 13]
    return [ScoringRow(token_ids=torch.randint(5, 250, (n,), generator=g).tolist(), loss_mask=[0, 0] + [1] * (n - 2))
            for n in lengths]


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    rows = _rows(rank)
    whole = TeacherScorer(tiny.model("micro", seed=2), pad_token_id=0, batch_rows=4, chunk_rows=7)
    sharded_model = shard_teacher(tiny.model("micro", seed=2), teacher_mesh(accelerator.device,
                                                                             accelerator.num_processes))
    sharded = TeacherScorer(sharded_model, pad_token_id=0, batch_rows=4, chunk_rows=7)
    held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in sharded_model.parameters())
    result = {"whole": whole.score_rows(rows), "sharded": sharded.score_rows(rows),
              "held": held, "total": sum(p.numel() for p in whole.model.parameters()),
              "head": sharded_model.get_output_embeddings().weight.numel()}
    torch.save(result, out / f"rank{rank}.pt")
    # the sharded model holds the process group through its mesh: free it before the group goes
    del sharded, sharded_model
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
