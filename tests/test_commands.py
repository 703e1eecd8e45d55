"""Refusals of ``reopold-agent train`` that concern the engine: one line, exit 2, nothing run."""

from reopold_agent.cli import main
from tests.test_train_e2e import _args, tiny_models  # noqa: F401  (fixture)


def _refused(argv, capsys) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_mini_batches_that_do_not_divide_the_rows_are_refused(tiny_models, tmp_path, capsys):
    # 2 prompts x 2 rollouts = 4 rows: 3 mini-batches cannot be equal
    err = _refused(_args(tiny_models, tmp_path / "run", extra=("--set", "train.mini_batches=3")), capsys)
    assert "train.mini_batches=3 does not divide the 4 rollouts" in err
    assert not (tmp_path / "run").exists()


def test_8bit_adamw_is_refused_on_the_cpu(tiny_models, tmp_path, capsys):
    err = _refused(_args(tiny_models, tmp_path / "run", extra=("--set", "train.optimizer=adamw_8bit")), capsys)
    assert "train.optimizer=adamw_8bit runs on a CUDA GPU only" in err
