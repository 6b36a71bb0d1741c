"""A FLUX.1 run config: the family's options, its flow-matching samplers, its sizes and its single file."""

from __future__ import annotations

from typing import Any

import pytest

from onetrainer.util.config.loader import validate
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError

DEV = {"type": "flux-dev", "base": "tiny:flux-dev"}
SCHNELL = {"type": "flux-schnell", "base": "tiny:flux-schnell"}


def _problems(**config: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate({"model": DEV, **config}, check_paths=False)
    return {problem.path: problem.message for problem in info.value.problems}


def test_options_take_the_familys_defaults_and_are_checked() -> None:
    from onetrainer.model.flux import FLUX_DEV, FLUX_SCHNELL, flux_options

    assert flux_options(FLUX_DEV, {}).model_dump() == {"t5_max_length": 512, "guidance": 1.0, "true_cfg": 1.0}
    assert flux_options(FLUX_SCHNELL, {}).t5_max_length == 256
    problems = _problems(model={**DEV, "options": {"t5_max_length": 1024, "guidanse": 2}})
    assert "model.options.t5_max_length" in problems
    assert "model.options.guidanse" in problems
    with pytest.raises(ConfigError, match=r"model\.options\.guidance"):
        TrainConfig(model={**SCHNELL, "options": {"guidance": 3.5}})
    assert TrainConfig(model={**DEV, "options": {"guidance": 3.5}}).model.options == {"guidance": 3.5}


def test_previews_default_to_the_flow_matching_euler_and_refuse_a_ddpm_solver() -> None:
    config = TrainConfig(model=DEV, sampling={"prompts": [{"prompt": "a cat"}]})
    assert config.sampling.prompts[0].scheduler == "euler"
    problems = _problems(sampling={"prompts": [{"prompt": "a cat", "scheduler": "ddim"}]})
    assert problems["sampling.prompts.0.scheduler"].startswith("not a scheduler of flow matching; valid: euler")


def test_preview_sides_are_multiples_of_16() -> None:
    problems = _problems(sampling={"prompts": [{"prompt": "a cat", "width": 72}]})
    assert problems["sampling.prompts.0.width"] == "must be a multiple of 16 for this model type: 64 or 80?"
    assert "sampling.prompts.0.height" not in problems


def test_a_single_file_output_cannot_hold_a_trained_text_encoder() -> None:
    problems = _problems(method="full", parts={"text_encoder": {"train": True}})
    assert "FLUX.1 transformer" in problems["parts.text_encoder.train"]
    folder = TrainConfig(model=DEV, method="full", parts={"text_encoder": {"train": True}}, saving={"output": "out"})
    assert folder.parts["text_encoder"].train


def test_a_prior_concept_needs_a_lora(tmp_path: Any) -> None:
    concepts = [{"path": str(tmp_path), "type": "prior"}]
    problems = _problems(method="full", saving={"output": "out"}, data={"concepts": concepts})
    assert "method full" in problems["data.concepts.0.type"]
    assert TrainConfig(model=DEV, data={"concepts": concepts}).data.concepts[0].type.value == "prior"
