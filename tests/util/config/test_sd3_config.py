"""An SD 3 / 3.5 run config: the family's options and defaults, its flow-matching samplers, its sizes."""

from __future__ import annotations

from typing import Any

import pytest

from onetrainer.util.config.loader import validate
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError

LARGE = {"type": "sd35-large", "base": "tiny:sd35-large"}
MEDIUM = {"type": "sd35-medium", "base": "tiny:sd35-medium"}


def _problems(model: dict[str, Any] = LARGE, **config: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate({"model": model, **config}, check_paths=False)
    return {problem.path: problem.message for problem in info.value.problems}


def test_options_take_the_familys_defaults_and_are_checked() -> None:
    from onetrainer.model.sd3 import SD35_LARGE, SD35_MEDIUM, sd3_options

    assert sd3_options(SD35_LARGE, {}).model_dump() == {"t5_max_length": 256, "t5": True}
    assert sd3_options(SD35_MEDIUM, {}).skip_layer_guidance == 0.0
    assert sd3_options(SD35_MEDIUM, {}).skip_layer_guidance_layers == [7, 8, 9]
    problems = _problems(model={**LARGE, "options": {"t5_max_length": 1024, "skip_layer_guidance": 2.5}})
    assert "model.options.t5_max_length" in problems
    assert "model.options.skip_layer_guidance" in problems, "skip-layer guidance is 3.5 Medium's"
    assert TrainConfig(model={**MEDIUM, "options": {"skip_layer_guidance": 2.5}}).model.options


def test_a_part_the_options_leave_out_cannot_train() -> None:
    """Refused before anything loads, naming the option that leaves T5 out."""
    without_t5 = {**MEDIUM, "options": {"t5": False}}
    problems = _problems(model=without_t5, parts={"text_encoder_3": {"train": True}})
    assert list(problems) == ["parts.text_encoder_3.train"]
    assert "model.options.t5" in problems["parts.text_encoder_3.train"]
    assert TrainConfig(model=without_t5, parts={"text_encoder": {"train": True}}).parts["text_encoder"].train
    assert TrainConfig(model=MEDIUM, parts={"text_encoder_3": {"train": True}}).parts["text_encoder_3"].train


def test_sd3s_timestep_default_is_logit_normal_unless_set() -> None:
    assert TrainConfig(model=LARGE).noise.timesteps.distribution.value == "logit-normal"
    chosen = TrainConfig(model=LARGE, noise={"timesteps": {"distribution": "uniform"}})
    assert chosen.noise.timesteps.distribution.value == "uniform"


def test_previews_default_to_the_flow_matching_euler_on_a_16_px_grid() -> None:
    config = TrainConfig(model=LARGE, sampling={"prompts": [{"prompt": "a cat"}]})
    assert config.sampling.prompts[0].scheduler == "euler"
    problems = _problems(sampling={"prompts": [{"prompt": "a cat", "scheduler": "ddim"}]})
    assert problems["sampling.prompts.0.scheduler"].startswith("not a scheduler of flow matching")
    problems = _problems(sampling={"prompts": [{"prompt": "a cat", "width": 72}]})
    assert problems["sampling.prompts.0.width"] == "must be a multiple of 16 for this model type: 64 or 80?"


def test_ddpm_keys_and_text_encoder_keys_on_the_vae_are_refused() -> None:
    problems = _problems(model={**LARGE, "prediction_type": "v_prediction"}, parts={"vae": {"dropout": 0.1}})
    assert "model.prediction_type" in problems
    assert "parts.vae.dropout" in problems
    assert TrainConfig(model=LARGE, parts={"text_encoder_3": {"dropout": 0.464}}).parts["text_encoder_3"].dropout
