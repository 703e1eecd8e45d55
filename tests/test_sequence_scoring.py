"""Scoring whole sequences through backbone and head: which models it refuses."""

import pytest
import torch

from reopold_agent.sequence_scoring import backbone_and_head, sequence_logprobs
from tests import tiny


@pytest.mark.parametrize("name,value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625),
                                        ("logits_scaling", 8.0)])
def test_models_that_transform_logits_after_the_head_are_refused(name, value):
    """Scoring runs backbone and head only; a soft-capped or scaled head would be scored wrongly."""
    model = tiny.model("nano", seed=0)
    backbone_and_head(model)
    setattr(model.config, name, value)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=rf"transforms its logits after the head \({name}="):
        sequence_logprobs(model, ids, torch.ones_like(ids))


def test_neutral_values_of_those_fields_are_accepted():
    model = tiny.model("nano", seed=0)
    model.config.final_logit_softcapping, model.config.logit_scale = None, 1.0
    ids = torch.tensor([[1, 2, 3]])
    logp, _ = sequence_logprobs(model, ids, torch.ones_like(ids))
    assert logp.shape == (1, 3)


def test_the_cli_refuses_such_a_teacher_in_one_line(tmp_path, capsys):
    from reopold_agent.cli import main

    model, tok = tiny.model("nano", seed=0), tiny.tokenizer()
    model.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    model.config.final_logit_softcapping = 30.0
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    code = main(["train", "--task", "tool_math", "--student", str(tmp_path / "student"), "--teacher",
                 str(tmp_path / "teacher"), "--steps", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "teacher" in err and "final_logit_softcapping=30.0" in err
