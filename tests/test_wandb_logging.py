"""Weights & Biases logging beside TensorBoard: offline runs read back from W&B's own file."""

from __future__ import annotations

import json
import struct
import sys
import time

import pytest

from reopold_agent.cli import main
from reopold_agent.config_loading import ConfigError, from_dict
from reopold_agent.run_logging import RunLogger, read_metrics
from reopold_agent.train_config import TrainConfig
from reopold_agent.wandb_logging import LoggingConfig, WandbMissing
from tests.test_train_e2e import _args, tiny_models  # noqa: F401  (tiny_models: a fixture)

OFFLINE = LoggingConfig(wandb=True, wandb_project="reopold-tests", wandb_mode="offline")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline and silent, its settings and caches inside the test's folder."""
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": tmp_path / "wb_config",
                       "WANDB_CACHE_DIR": tmp_path / "wb_cache",
                       "WANDB_DATA_DIR": tmp_path / "wb_data"}.items():
        monkeypatch.setenv(key, str(value))


def _records(run_dir, wait_s: float = 20.0):
    """(run record, history rows) of the one offline W&B run in ``run_dir/wandb``.

    W&B's service writes the file after ``finish`` returns, so this waits for its exit record.
    """
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait_s
    records = _read(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{path} has no exit record after {wait_s} s"
        time.sleep(0.1)
        records = _read(path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    return run, history


def _read(path):
    """The records of a ``.wandb`` file: a 7-byte header and then LevelDB-log chunks (crc32,
    length, type) in 32 KiB blocks, each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if pos + 7 + length > len(raw):  # a chunk still being written
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_run_holds_the_config_and_every_metrics_row(tmp_path, offline_wandb):
    run_dir = tmp_path / "exp1"
    logger = RunLogger(run_dir, tensorboard=False, logging=OFFLINE)
    logger.save_config({"train": {"steps": 3, "lr": 1e-5}})
    logger.log_metrics(0, {"eval/greedy_accuracy": 0.25})
    logger.log_metrics(0, {"objective/loss": 0.5})
    logger.log_metrics(1, {"objective/loss": 0.25, "objective/kl": float("nan")})
    logger.close()
    run, history = _records(run_dir)
    assert (run.project, run.display_name, run.run_group) == ("reopold-tests", "exp1", "exp1")
    config = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    assert config == {"train": {"steps": 3, "lr": 1e-5}}
    rows = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in history]
    assert rows == [{"_step": 0, "eval/greedy_accuracy": 0.25, "objective/loss": 0.5},
                    {"_step": 1, "objective/loss": 0.25}]  # NaN left out, as in TensorBoard


def test_a_resumed_session_is_a_new_run_named_for_its_checkpoint(tmp_path, offline_wandb):
    run_dir = tmp_path / "exp2"
    logger = RunLogger(run_dir, tensorboard=False,
                       logging=LoggingConfig(wandb=True, wandb_mode="offline", wandb_name="mine"))
    logger.rewind_to(2)
    logger.log_metrics(2, {"objective/loss": 0.125})
    logger.close()
    run, history = _records(run_dir)
    assert (run.display_name, run.run_group) == ("mine (resumed at step 2)", "mine")
    assert [(row["_step"], row["objective/loss"]) for row in history] == [(2, 0.125)]


def test_logging_section_defaults_off_and_names_bad_values():
    assert TrainConfig().logging.wandb is False
    config = from_dict(TrainConfig, {"logging": {"wandb": True, "wandb_mode": "offline"}})
    assert config.logging == LoggingConfig(wandb=True, wandb_mode="offline")
    with pytest.raises(ConfigError, match="logging.wandb_mode"):
        from_dict(TrainConfig, {"logging": {"wandb_mode": "cloud"}})
    with pytest.raises(ConfigError, match="logging.wandb_project must be a non-empty string"):
        from_dict(TrainConfig, {"logging": {"wandb_project": " "}})


def test_without_the_package_the_setting_is_refused_with_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(WandbMissing, match=r"wandb package is not installed: pip install wandb"):
        RunLogger(tmp_path / "run", tensorboard=False, logging=OFFLINE)
    RunLogger(tmp_path / "run", tensorboard=False, logging=LoggingConfig()).close()  # off: fine
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "logging.wandb=true", "--output-dir", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install wandb (or set logging.wandb: false)" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written



def test_a_training_logs_its_rows_and_config_to_an_offline_wandb_run(tiny_models, tmp_path, offline_wandb):
    out = tmp_path / "exp3"
    wandb_flags = ("--set", "logging.wandb=true", "--set", "logging.wandb_mode=offline")
    assert main(_args(tiny_models, out, extra=wandb_flags)) == 0
    run, history = _records(out)
    assert run.display_name == "exp3"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["train"]["steps"] == 2 and config["logging"]["wandb"] is True
    logged: dict[int, set[str]] = {}
    for row in history:
        logged.setdefault(row["_step"], set()).update(row)
    rows = read_metrics(out)
    assert sorted(logged) == sorted({r["step"] for r in rows}) == [0, 1, 2]
    for row in rows:  # every number of metrics.jsonl reached W&B at its step
        assert {k for k, v in row.items() if k != "step" and isinstance(v, (int, float))} <= logged[row["step"]]
    assert "time/rollout_tool_queue_wait_s" in logged[1]
