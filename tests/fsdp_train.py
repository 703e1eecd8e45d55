"""``reopold-agent train`` in every process of a CPU (gloo) launch, the student sharded by FSDP2;
tests/test_sharded_training.py starts it.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_train.py train --task ...

accelerate picks FSDP only for GPU process groups, so the launch first routes accelerate's
shared state to FSDP2 (:func:`tests.fsdp_cases.fsdp_accelerator`); the command then builds its
accelerator from that state as it builds it from ``accelerate launch``'s FSDP config on GPUs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reopold_agent.cli import main  # noqa: E402
from tests.fsdp_cases import fsdp_accelerator  # noqa: E402

if __name__ == "__main__":
    fsdp_accelerator("bf16" if "--bf16" in sys.argv else "no")  # the mixed precision train_command asks for
    sys.exit(main(sys.argv[1:]))
