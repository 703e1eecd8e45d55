import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from reopold_agent import checkpoint
from reopold_agent.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, load_newest_loadable,
                                      load_training_state, save_checkpoint, set_aside)
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


def _two_checkpoints(tmp_path):
    """Checkpoints 1 and 2 of a model whose weights differ between them; returns (model, w1, w2)."""
    model, opt, sched = _parts()
    save_checkpoint(tmp_path, 1, model=model, tokenizer=tiny.tokenizer(), optimizer=opt, scheduler=sched, extra={})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.tensor([[4, 5, 6]])).logits.sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 2, model=model, tokenizer=tiny.tokenizer(), optimizer=opt, scheduler=sched, extra={})
    return first, {k: v.clone() for k, v in model.state_dict().items()}


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage, reason", [
    (lambda c: _truncate(c / "model.safetensors"), "model.safetensors: SafetensorError"),
    (lambda c: _truncate(c / "optimizer.pt", 0.3), "optimizer.pt: "),
    (lambda c: _truncate(c / "state.pt", 0.5), "state.pt: "),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt: FileNotFoundError"),
])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage, reason):
    first, second = _two_checkpoints(tmp_path)
    damage(tmp_path / "checkpoints" / "step_000002")
    model, opt, sched = _parts()
    logs = []
    restored = load_newest_loadable(tmp_path, model=model, optimizer=opt, scheduler=sched, log=logs.append)
    assert restored.path.name == "step_000001" and restored.state["step"] == 1
    assert restored.unreadable == [tmp_path / "checkpoints" / "step_000002"]
    assert len(logs) == 2 and reason in logs[0] and "step_000002" in logs[0]
    assert logs[1] == f"falling back to the older checkpoint {tmp_path / 'checkpoints' / 'step_000001'}"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, first[name])
    moved = set_aside(restored.unreadable[0])
    assert moved.name == "unreadable_step_000002" and latest_checkpoint(tmp_path).name == "step_000001"


def test_a_checkpoint_of_another_model_is_refused_naming_it_and_changes_nothing(tmp_path):
    _two_checkpoints(tmp_path)
    from reopold_agent.demo.tiny_models import TinyLMSpec, build_causal_lm

    other = build_causal_lm(tiny.tokenizer(), TinyLMSpec(hidden_size=32, intermediate_size=256, num_layers=1,
                                                         num_heads=4, num_kv_heads=2))  # nano's names, narrower
    opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_newest_loadable(tmp_path, model=other, optimizer=opt, scheduler=sched, log=lambda m: None)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "checkpoints" / "step_000002"))
    assert "in the checkpoint but" in message and "older checkpoints fail too" in message and "\n" not in message
    for name, value in other.state_dict().items():
        assert torch.equal(value, before[name])
    assert not opt.state_dict()["state"]


def test_no_checkpoint_is_none(tmp_path):
    model, opt, sched = _parts()
    assert load_newest_loadable(tmp_path, model=model, optimizer=opt, scheduler=sched) is None


def test_a_full_disk_while_saving_leaves_the_last_checkpoint_and_latest_intact(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    save_checkpoint(tmp_path, 1, model=model, tokenizer=tiny.tokenizer(), optimizer=opt, scheduler=sched, extra={})
    monkeypatch.setattr(checkpoint, "open", _filling_open(200), raising=False)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 2, model=model, tokenizer=tiny.tokenizer(), optimizer=opt, scheduler=sched, extra={})
    assert info.value.errno == errno.ENOSPC  # torch's own RuntimeError carries the file system's error
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_000001"]  # no half-written folder
    assert (root / "LATEST").read_text() == "step_000001"
    model2, opt2, sched2 = _parts()
    assert load_checkpoint(root / "step_000001", model=model2, optimizer=opt2, scheduler=sched2)["step"] == 1


def _filling_open(capacity: int):
    """``open`` for checkpoint.py whose files take ``capacity`` bytes, then fail with ENOSPC."""
    import builtins

    def fake_open(path, mode="r", *args, **kwargs):
        real = builtins.open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return real

        class Full:
            written = 0

            def write(self, data):
                room = capacity - Full.written
                if room <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                chunk = bytes(data)[:room]
                Full.written += len(chunk)
                return real.write(chunk)

            def __getattr__(self, name):
                return getattr(real, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

        return Full()

    return fake_open
