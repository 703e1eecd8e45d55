import signal
import subprocess
import sys
import textwrap
import time

import torch

from reopold_agent.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from tests import tiny


def _parts():
    model = tiny.model("nano")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    return model, opt, sched


def test_save_load_round_trip_and_pruning(tmp_path):
    model, opt, sched = _parts()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, tokenizer=tiny.tokenizer(), optimizer=opt, scheduler=sched,
                        extra={"note": step}, keep=2)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]
    _, opt2, sched2 = _parts()
    state = load_training_state(ckpt, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 3 and state["note"] == 3
    a = opt.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], a)


def test_kill_9_while_saving_never_corrupts_latest(tmp_path):
    """A writer saving in a loop is SIGKILLed at several moments; LATEST always loads."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tiny.__file__.rsplit('/tests/', 1)[0])!r})
        torch.set_num_threads(1)
        from tests.test_checkpoint import _parts
        from reopold_agent.checkpoint import save_checkpoint
        from tests import tiny
        model, opt, sched = _parts()
        step = 0
        while True:
            step += 1
            save_checkpoint({str(tmp_path)!r}, step, model=model, tokenizer=tiny.tokenizer(), optimizer=opt,
                            scheduler=sched, extra={{}}, keep=2)
            print(step, flush=True)
    """)
    seen = []
    for delay in (0.0, 0.07, 0.23):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # the first checkpoint is complete; kill somewhere inside a later one
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = latest_checkpoint(tmp_path)
        if ckpt is None:
            continue
        _, opt2, sched2 = _parts()
        state = load_training_state(ckpt, optimizer=opt2, scheduler=sched2)
        seen.append(state["step"])
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(ckpt)  # loads whole
    assert len(seen) == 3
