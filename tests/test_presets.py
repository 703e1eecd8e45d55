"""Every shipped preset loads into a valid TrainConfig."""

from importlib import resources

import pytest

from reopold_agent.cli import build_parser, resolve_config

PRESETS = sorted(p.name[:-5] for p in resources.files("reopold_agent.configs").iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_resolves(preset):
    args = build_parser().parse_args(["train", "--task", preset])
    config = resolve_config(args)
    assert config.task.name and config.train.steps >= 1


def test_default_preset_is_the_embedded_tool_math_run():
    config = resolve_config(build_parser().parse_args(["train", "--task", "tool_math"]))
    assert config.model.student is None and config.model.teacher is None
    assert config.objective.name == "reopold" and config.eval.num_problems >= 500
    # a high rate while the embedded student is weak, small steps once its rewards are near zero
    assert config.train.lr_decay == "cosine" and config.train.lr * config.train.final_lr_ratio <= 1e-4


def test_visual_qa_default_decays_its_learning_rate():
    config = resolve_config(build_parser().parse_args(["train", "--task", "visual_qa"]))
    assert config.model.student is None and config.task.env_kwargs["level"] == "dots"
    assert config.train.lr_decay == "cosine" and config.train.lr <= 1e-4


def test_visual_qa_vl_preset_fits_its_images():
    """Qwen2.5-VL-3B from 7B on visual_qa scenes: a scene keeps its full resolution, and the
    episode budget holds the most images an episode can show with room for the turns."""
    from transformers import Qwen2VLImageProcessor

    from reopold_agent.envs.visual_qa import VisualQAEnv
    from reopold_agent.vision import VisionProcessor
    from reopold_agent.vision.processing import message_images

    config = resolve_config(build_parser().parse_args(["train", "--task", "visual_qa_qwen2.5-vl-3b_from_7b"]))
    assert config.model.student == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert config.model.teacher == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert config.model.dtype == "bfloat16" and config.model.gradient_checkpointing
    assert (config.objective.name, config.objective.reopold.lam, config.objective.reopold.beta) == ("reopold", 0.3, 0.2)
    assert config.objective.switch_step(config.train.steps) == 99
    r = config.rollout
    env = VisualQAEnv(split="eval", **config.task.env_kwargs)
    assert env.level == "scenes" and env.num_items() >= config.eval.num_problems
    assert r.max_images_per_episode == 1 + config.task.env_kwargs["max_tool_rounds"]
    messages, _ = env.reset(seed=0, options={"index": 0})
    (image,) = message_images(messages)
    processor = Qwen2VLImageProcessor(min_pixels=r.image_min_pixels, max_pixels=r.image_max_pixels, patch_size=14,
                                      temporal_patch_size=2, merge_size=2)
    vision = VisionProcessor(processor, image_token_id=151655, patch_size=14, spatial_merge_size=2,
                             min_pixels=r.image_min_pixels, max_pixels=r.image_max_pixels)
    features = vision.encode(image)
    assert image.size == features.image.size == (448, 448) and features.num_tokens == 256
    # every image at its largest and 512 tokens per assistant turn still fit the episode budget
    assert r.max_images_per_episode * features.num_tokens + r.max_turns * 512 <= r.max_episode_tokens


def test_bare_defaults_switch_to_refinement_a_third_of_the_way():
    """With no preset value, REOPOLD still reaches refinement: the switch is a fraction of the run."""
    from reopold_agent.train_config import ObjectiveConfig

    assert ObjectiveConfig().switch_step(100) == 33 and ObjectiveConfig().switch_step(300) == 99


def test_an_absolute_switch_step_needs_the_fraction_off():
    from reopold_agent.config_loading import ConfigError, from_dict
    from reopold_agent.train_config import TrainConfig

    with pytest.raises(ConfigError, match="switch_step=50 is ignored while objective.switch_fraction=0.33"):
        from_dict(TrainConfig, {"objective": {"reopold": {"switch_step": 50}}})
    config = from_dict(TrainConfig, {"objective": {"switch_fraction": None, "reopold": {"switch_step": 50}}})
    assert config.objective.switch_step(400) == 50


def test_current_entropy_with_a_step_wide_threshold_is_refused():
    from reopold_agent.config_loading import ConfigError, from_dict
    from reopold_agent.train_config import TrainConfig

    with pytest.raises(ConfigError, match="entropy_source=current needs objective.selection_scope=minibatch"):
        from_dict(TrainConfig, {"objective": {"entropy_source": "current", "selection_scope": "step"}})
    assert from_dict(TrainConfig, {"objective": {"entropy_source": "current"}}).objective.selection_scope == "minibatch"
