"""Step shapes that split evenly over processes and mini-batches (train_config.check_batch_shape)."""

import pytest

from reopold_agent.config_loading import ConfigError, from_dict
from reopold_agent.train_config import TrainConfig, check_batch_shape


def _config(prompts, groups, minis):
    return from_dict(TrainConfig, {"train": {"prompts_per_step": prompts, "mini_batches": minis},
                                   "rollout": {"group_size": groups}})


def test_shapes_that_split_evenly_pass():
    check_batch_shape(_config(8, 4, 4), processes=2)  # 4 prompts x 4 rollouts = 16 rows per process
    check_batch_shape(_config(2, 3, 3), processes=2)


@pytest.mark.parametrize("prompts,groups,minis,processes,message", [
    (2, 4, 1, 4, "train.prompts_per_step=2 is fewer than the 4 training processes"),
    (6, 4, 1, 4, "train.prompts_per_step=6 is not divisible by the 4 training processes"),
    (4, 3, 4, 2, "train.mini_batches=4 does not divide the 6 rollouts each of the 2 process(es)"),
])
def test_uneven_shapes_are_refused_with_one_line(prompts, groups, minis, processes, message):
    config = _config(prompts, groups, 1)
    config.train.mini_batches = minis
    with pytest.raises(ValueError) as info:
        check_batch_shape(config, processes)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_single_process_shape_is_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="train.mini_batches=4 does not divide the 6 rollouts"):
        _config(3, 2, 4)


@pytest.mark.parametrize("packed, shared", [(True, True), (True, False), (False, True)])
def test_a_sharded_model_scores_padded_with_one_forward_per_batch(packed, shared):
    """Packing and shared prefixes make the number of forwards depend on the data, and each
    forward of a sharded model is a collective every process must join."""
    from reopold_agent.train_config import ModelConfig

    model = ModelConfig(packed_sequences=packed, shared_prefix=shared)
    assert model.scoring_layout(sharded=False) == (packed, shared)
    assert model.scoring_layout(sharded=True) == (False, False)
