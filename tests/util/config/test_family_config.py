"""The family-neutral config: the family spec fills `parts`, and refuses what the family does not use.

Every refusal names its key path and what would be valid, both when a `TrainConfig` is built and when
`load_config` reports a file's problems. The made-up flow-matching family (`fake_family`, see
`tests/util/conftest.py`) shows the same rules follow any registered spec.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.util.config.loader import dump_config, load_config, validate
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError
from onetrainer.util.family import FamilySpec, family_names

SD15 = {"type": "sd15", "base": "tiny:sd15"}


def _problems(**config: Any) -> dict[str, str]:
    """Key path -> message of every problem `TrainConfig` raises for `config` (an sd15 model by default)."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{"model": SD15, **config})
    return {problem.path: problem.message for problem in info.value.problems}


def test_parts_are_filled_from_the_spec() -> None:
    config = TrainConfig(model=SD15)
    assert list(config.parts) == ["unet", "text_encoder", "vae"]
    assert (config.parts["unet"].train, config.parts["text_encoder"].train) == (True, False)
    assert config.parts["vae"].train is None


def test_what_the_user_wrote_wins_and_embedding_runs_train_no_part() -> None:
    config = TrainConfig(model=SD15, parts={"text_encoder": {"train": True, "layer_skip": 1}})
    assert (config.parts["unet"].train, config.parts["text_encoder"].train) == (True, True)
    assert config.parts["text_encoder"].layer_skip == 1
    embedding = TrainConfig(model=SD15, method="embedding", embedding={"placeholder": "<x>"})
    assert not any(part.train for part in embedding.parts.values())


def test_a_config_without_a_type_takes_the_default_family() -> None:
    config = TrainConfig(model={"base": "tiny:sd15"})
    assert config.model.type in family_names()
    assert set(config.parts) == {"unet", "text_encoder", "vae"}


def test_an_unknown_part_is_named_with_a_suggestion_and_the_parts() -> None:
    message = _problems(parts={"text_encoder_2": {"train": True}})["parts.text_encoder_2"]
    assert "did you mean 'text_encoder'" in message
    assert "unet, text_encoder, vae" in message


@pytest.mark.parametrize(
    ("parts", "path"),
    [
        ({"vae": {"train": True}}, "parts.vae.train"),
        ({"vae": {"learning_rate": 1e-4}}, "parts.vae.learning_rate"),
        ({"vae": {"layer_skip": 1}}, "parts.vae.layer_skip"),
        ({"unet": {"layer_skip": 1}}, "parts.unet.layer_skip"),
    ],
)
def test_keys_the_parts_role_does_not_take_are_errors(parts: dict[str, Any], path: str) -> None:
    assert list(_problems(parts=parts)) == [path]


def test_a_vae_takes_its_weight_dtype() -> None:
    assert TrainConfig(model=SD15, parts={"vae": {"weight_dtype": "fp16"}}).parts["vae"].weight_dtype.value == "fp16"


@pytest.mark.parametrize(
    ("config", "path", "said"),
    [
        ({"noise": {"shift": 3}}, "noise.shift", "flow matching"),
        ({"noise": {"dynamic_shift": True}}, "noise.dynamic_shift", "flow matching"),
        ({"noise": {"timesteps": {"mode_scale": 1.0}}}, "noise.timesteps.mode_scale", "flow matching"),
        ({"noise": {"timesteps": {"distribution": "mode"}}}, "noise.timesteps.distribution", "valid: uniform"),
        ({"noise": {"timesteps": {"distribution": "cosmap"}}}, "noise.timesteps.distribution", "sigmoid"),
        ({"loss": {"weighting": "sigma-sqrt"}}, "loss.weighting", "min-snr-gamma"),
        ({"loss": {"weighting": "cosmap"}}, "loss.weighting", "debiased"),
    ],
)
def test_flow_matching_settings_are_refused_for_a_ddpm_family(config: dict[str, Any], path: str, said: str) -> None:
    problems = _problems(**config)
    assert list(problems) == [path]
    assert said in problems[path]
    assert "SD 1.x" in problems[path] or "DDPM" in problems[path]


def test_embedding_runs_train_no_part() -> None:
    problems = _problems(method="embedding", embedding={"placeholder": "<x>"}, parts={"unet": {"train": True}})
    assert list(problems) == ["parts.unet.train"]
    assert "embedding.additional" in problems["parts.unet.train"]


def test_an_unknown_model_type_lists_the_types_with_a_suggestion() -> None:
    message = _problems(model={"type": "sd1.5", "base": "tiny:sd15"})["model.type"]
    assert "did you mean 'sd15'" in message
    assert all(name in message for name in family_names())


def test_options_a_family_does_not_have_are_errors() -> None:
    problems = _problems(model={**SD15, "options": {"x": 1}})
    assert list(problems) == ["model.options.x"]
    assert "no options" in problems["model.options.x"]


def test_a_key_at_its_default_asks_for_nothing() -> None:
    """Written out with default values (as `dump_config` writes every key), family-specific keys pass."""
    config = TrainConfig(
        model=SD15, noise={"shift": None, "timesteps": {"mode_scale": 1.29}}, parts={"unet": {"layer_skip": 0}}
    )
    assert config.noise.shift is None


def test_a_dumped_config_loads_back(tmp_path: Path) -> None:
    config = TrainConfig(model=SD15, parts={"text_encoder": {"train": True, "learning_rate": 5e-5}})
    again = validate(yaml.safe_load(dump_config(config)), check_paths=False)
    assert again == config


def test_the_loader_reports_every_family_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  type: sd15\n  base: tiny:sd15\n"
        "parts:\n  text_encoder_2:\n    train: true\n  vae:\n    train: true\n"
        "noise:\n  shift: 3\n"
        "loss:\n  weighting: sigma-sqrt\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.options={x: 1}"])
    paths = [problem.path for problem in info.value.problems]
    assert sorted(paths) == sorted(
        ["parts.text_encoder_2", "parts.vae.train", "noise.shift", "loss.weighting", "model.options.x"]
    )
    assert info.value.where is not None
    assert str(path) in info.value.where
    assert "command line: model.options={x: 1}" in info.value.where


def test_the_rules_follow_any_registered_spec(fake_family: FamilySpec) -> None:
    model = {"type": fake_family.name, "base": "org/model"}
    config = TrainConfig(model=model, noise={"shift": 3.0}, loss={"weighting": "sigma-sqrt"})
    assert list(config.parts) == ["transformer", "text_encoder", "text_encoder_2", "vae"]
    assert [name for name, part in config.parts.items() if part.train] == ["transformer"]
    with pytest.raises(ConfigError) as info:
        TrainConfig(
            model={**model, "prediction_type": "epsilon"},
            method="embedding",
            embedding={"placeholder": "<x>"},
            noise={"zero_terminal_snr": True, "timesteps": {"distribution": "sigmoid"}},
            loss={"weighting": "min-snr-gamma"},
            parts={"unet": {"train": True}},
        )
    problems = {problem.path: problem.message for problem in info.value.problems}
    assert set(problems) == {
        "method",
        "parts.unet",
        "noise.zero_terminal_snr",
        "model.prediction_type",
        "noise.timesteps.distribution",
        "loss.weighting",
    }
    assert "valid: full, lora" in problems["method"]
    assert "parts: transformer, text_encoder, text_encoder_2, vae" in problems["parts.unet"]
    assert "Test DiT models train with flow matching" in problems["noise.zero_terminal_snr"]


@pytest.mark.parametrize(("prediction", "refused"), [("epsilon", True), ("v_prediction", False), ("auto", False)])
def test_zero_terminal_snr_with_epsilon_prediction_is_refused_before_loading(prediction: str, refused: bool) -> None:
    """`auto` is judged once the model says what it predicts (`model_setup`)."""
    model = {"type": "sd15", "base": "org/model", "prediction_type": prediction}
    if not refused:
        assert TrainConfig(model=model, noise={"zero_terminal_snr": True}).noise.zero_terminal_snr
        return
    with pytest.raises(ConfigError) as info:
        TrainConfig(model=model, noise={"zero_terminal_snr": True})
    assert [(problem.path, problem.value) for problem in info.value.problems] == [("model.prediction_type", "epsilon")]
    assert "set model.prediction_type: v_prediction" in info.value.problems[0].message


# ------------------------------------------------------------------ what the settings change in training


@functools.cache
def _base() -> DiffusionModel:
    from onetrainer.model_loader.pipeline import load_model

    return load_model("tiny:sd15")


def _setup(**config: Any) -> Any:
    from onetrainer.util.registry import ModuleKind, lookup

    setup = lookup(ModuleKind.SETUP, "sd15")(copy.deepcopy(_base()), TrainConfig(model=SD15, **config))
    setup.prepare("cpu", torch.float32)
    return setup


def test_layer_skip_conditions_on_an_earlier_layer_after_the_final_norm() -> None:
    """layer_skip 1 is A1111's clip skip 2: the penultimate layer's states, through the final layer norm."""
    from onetrainer.model.clip_text import tokenize

    captions = ["a red circle", "a blue square"]
    plain, skipped = _setup().text_encoder(), _setup(parts={"text_encoder": {"layer_skip": 1}}).text_encoder()
    model = _base()
    with torch.no_grad():
        outputs = model.text_encoder(tokenize(model.tokenizer, captions), output_hidden_states=True)
    norm = getattr(model.text_encoder, "text_model", model.text_encoder).final_layer_norm
    for conditioner in (plain, skipped):
        conditioner.load()
    assert torch.allclose(plain.encode(captions)["text_hidden"], outputs.last_hidden_state, atol=1e-6)
    with torch.no_grad():
        expected = norm(outputs.hidden_states[-2])
    assert torch.allclose(skipped.encode(captions)["text_hidden"], expected, atol=1e-6)
    assert plain.identity() != skipped.identity()


def test_part_and_embedding_learning_rates_become_the_optimizer_groups() -> None:
    setup = _setup(
        training={"learning_rate": 1e-4},
        parts={"text_encoder": {"train": True, "learning_rate": 5e-5}},
        embedding={"additional": [{"placeholder": "<x>"}], "learning_rate": 1e-3},
    )
    rates = {group["name"]: group["lr"] for group in setup.parameter_groups()}
    assert rates == {"unet": 1e-4, "text_encoder": 5e-5, "embeddings": 1e-3}
    unet = _setup(parts={"unet": {"learning_rate": 2e-4}})
    assert {group["name"]: group["lr"] for group in unet.parameter_groups()} == {"unet": 2e-4}


@pytest.mark.parametrize(
    ("family", "encoder"),
    [
        ("sd15", "text_encoder"),
        ("sdxl", "text_encoder"),
        ("sdxl", "text_encoder_2"),
        ("sd35-large", "text_encoder_3"),
        ("flux-dev", "text_encoder_2"),
    ],
)
def test_each_text_encoders_dropout_is_taken(family: str, encoder: str) -> None:
    config = TrainConfig(model={"type": family, "base": f"tiny:{family}"}, parts={encoder: {"dropout": 0.2}})
    assert config.parts[encoder].dropout == 0.2


@pytest.mark.parametrize(
    ("family", "encoder", "title"),
    [
        ("sd35-large", "text_encoder_3", "T5-XXL"),
        ("flux-dev", "text_encoder", "CLIP ViT-L"),
        ("flux-dev", "text_encoder_2", "T5-XXL"),
    ],
)
def test_layer_skip_is_refused_before_loading_where_the_model_reads_no_hidden_layer(
    family: str, encoder: str, title: str
) -> None:
    problems = _problems(model={"type": family, "base": f"tiny:{family}"}, parts={encoder: {"layer_skip": 1}})
    assert f"read only the {title}" in problems[f"parts.{encoder}.layer_skip"]
    taken = TrainConfig(
        model={"type": "sd35-large", "base": "tiny:sd35-large"}, parts={"text_encoder": {"layer_skip": 1}}
    )
    assert taken.parts["text_encoder"].layer_skip == 1
