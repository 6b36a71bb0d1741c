"""`model.base` and `model.vae` are checked from names and headers when a config loads, before any weights."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from onetrainer.util.config.loader import load_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError

LORA_KEY = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  type: sd15\n  base: org/model\ndata:\n  concepts:\n    - path: {images}\n")
    return path


def _weights(path: Path, *keys: str) -> Path:
    save_file({key: np.zeros((2, 2), dtype=np.float32) for key in keys}, str(path))
    return path


def _problem(config: Path, *overrides: str, key: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config, list(overrides))
    problems = {problem.path: problem for problem in info.value.problems}
    assert key in problems, info.value
    return str(problems[key])


def test_an_unknown_tiny_model_is_refused_with_the_known_ones(run_config: Path) -> None:
    problem = _problem(run_config, "model.base=tiny:foo", key="model.base")
    assert "'tiny:foo'" in problem
    assert "unknown tiny model" in problem
    assert "tiny:sd15" in problem


def test_a_lora_as_the_base_model_is_refused_saying_what_it_is(run_config: Path, tmp_path: Path) -> None:
    lora = _weights(tmp_path / "lora.safetensors", LORA_KEY, LORA_KEY.replace("down", "up"))
    problem = _problem(run_config, f"model.base={lora}", key="model.base")
    assert "a LoRA, not a base model" in problem
    assert "expected a base model" in problem


def test_a_folder_that_is_no_diffusers_model_is_refused_as_the_base(run_config: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no model_index.json" in _problem(run_config, f"model.base={empty}", key="model.base")


@pytest.mark.parametrize("content", [b"not weights at all", b""])
def test_a_damaged_vae_file_is_refused_naming_model_vae(run_config: Path, tmp_path: Path, content: bytes) -> None:
    garbage = tmp_path / "vae.safetensors"
    garbage.write_bytes(content)
    problem = _problem(run_config, f"model.vae={garbage}", key="model.vae")
    assert "neither a safetensors file nor a PyTorch checkpoint" in problem
    assert "expected a VAE" in problem


def test_a_lora_as_the_vae_is_refused(run_config: Path, tmp_path: Path) -> None:
    lora = _weights(tmp_path / "lora.safetensors", LORA_KEY)
    assert "no VAE encoder or decoder" in _problem(run_config, f"model.vae={lora}", key="model.vae")


def test_a_tiny_model_as_the_vae_is_refused(run_config: Path) -> None:
    assert "cannot serve as a VAE" in _problem(run_config, "model.vae=tiny:sd15", key="model.vae")


def test_models_and_vaes_of_the_right_kind_pass(run_config: Path, tmp_path: Path, tiny_sd15_dir: Path) -> None:
    vae = _weights(tmp_path / "vae.safetensors", "first_stage_model.encoder.conv_in.weight")
    config = load_config(run_config, [f"model.base={tiny_sd15_dir}", f"model.vae={vae}"])
    assert (config.model.base, config.model.vae) == (str(tiny_sd15_dir), str(vae))
    assert load_config(run_config, ["model.base=tiny:sd15", f"model.vae={tiny_sd15_dir}"]).model.base == "tiny:sd15"


def test_hub_ids_are_left_to_the_load(run_config: Path) -> None:
    assert load_config(run_config, ["model.vae=org/vae"]).model.vae == "org/vae"


def test_a_model_config_built_in_code_reads_no_header(tmp_path: Path) -> None:
    """Loaders build a `ModelConfig` of the source they were given and detect it themselves, with their own errors."""
    lora = _weights(tmp_path / "lora.safetensors", LORA_KEY)
    assert TrainConfig(model={"type": "sd15", "base": str(lora)}).model.base == str(lora)


@pytest.mark.parametrize("key", ["config", "tokenizer"])
def test_architecture_and_tokenizer_describe_only_a_single_file_base(tmp_path: Path, key: str) -> None:
    """With any other base they were ignored without a word."""
    from onetrainer.util.config.loader import validate

    with pytest.raises(ConfigError) as error:
        validate({"model": {"base": "tiny:sd15", key: "org/arch"}}, check_paths=False)
    (problem,) = error.value.problems
    assert problem.path == f"model.{key}"
    assert "describes a single-file base; model.base tiny:sd15 is a built-in tiny model" in problem.message
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a diffusers folder or hub id"):
        validate({"model": {"base": str(folder), key: "org/arch"}}, check_paths=False)
    single = validate({"model": {"base": str(tmp_path / "model.safetensors"), key: "org/arch"}}, check_paths=False)
    assert getattr(single.model, key) == "org/arch"
