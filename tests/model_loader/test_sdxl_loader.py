"""Loading SDXL: diffusers folders, SGM single files (architecture, both tokenizers), a separate VAE."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.ldm_tables import VAE_PREFIX
from onetrainer.util.keymaps.sdxl_single_file import SDXL_LAYOUT
from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl_dir: Path) -> Path:
    output = tmp_path_factory.mktemp("sdxl-single") / "tiny-sdxl.safetensors"
    DiffusionSaver().save(load_model(tiny_sdxl_dir), output, method=TrainingMethod.FULL, dtype=None)
    return output


def _assert_same_weights(model: DiffusionModel, reference: DiffusionModel) -> None:
    for name in COMPONENTS:
        ours, theirs = model.components[name].state_dict(), reference.components[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name


def test_folder_loads_every_component_with_its_settings(tiny_sdxl_dir: Path) -> None:
    model = load_model(tiny_sdxl_dir)
    assert model.model_type == "sdxl"
    assert set(model.components) == set(COMPONENTS)
    assert set(model.tokenizers) == {"tokenizer", "tokenizer_2"}
    assert model.pipeline_config == {"force_zeros_for_empty_prompt": True}
    assert (model.prediction_type, model.scheduler_class) == ("epsilon", "EulerDiscreteScheduler")


def test_single_file_loads_the_same_model(sdxl_single_file: Path, tiny_sdxl_dir: Path) -> None:
    model = load_model(sdxl_single_file, config=str(tiny_sdxl_dir))
    reference = load_model(tiny_sdxl_dir)
    assert model.model_type == "sdxl"
    _assert_same_weights(model, reference)
    assert model.tokenizers["tokenizer_2"].pad_token == "!", "the architecture folder's own tokenizer_2"
    assert model.tokenizers["tokenizer"].pad_token == "<|endoftext|>"
    assert model.pipeline_config == {"force_zeros_for_empty_prompt": True}


def test_single_file_in_half_precision(sdxl_single_file: Path) -> None:
    model = load_model(sdxl_single_file, config="tiny:sdxl", dtype="bf16")
    assert {module.dtype for module in model.components.values()} == {torch.bfloat16}


def test_single_file_of_another_architecture_names_the_fix(sdxl_single_file: Path) -> None:
    with pytest.raises(UserError, match="shipped sdxl config") as caught:
        load_model(sdxl_single_file)
    assert "model.config" in (caught.value.hint or "")


def test_a_tokenizer_found_outside_its_own_folder_gets_the_pad_token_its_encoder_needs(
    sdxl_single_file: Path, tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    """A CLIP tokenizer given for both encoders (its folder has no tokenizer_2/) pads the second with "!"."""
    clip = tmp_path / "clip-tokenizer"
    shutil.copytree(tiny_sdxl_dir / "tokenizer", clip / "tokenizer")
    model = load_model(sdxl_single_file, config=str(tiny_sdxl_dir), tokenizer=str(clip))
    assert model.tokenizers["tokenizer"].pad_token == "<|endoftext|>"
    assert model.tokenizers["tokenizer_2"].pad_token == "!"


def test_a_separate_vae_folder_replaces_the_base_vae(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_sdxl_pipeline(seed=5).vae
    other.save_pretrained(tmp_path / "vae")
    model = load_model(tiny_sdxl_dir, vae=str(tmp_path / "vae"))
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in other.state_dict().items())
    assert not torch.equal(model.vae.encoder.conv_in.weight, load_model(tiny_sdxl_dir).vae.encoder.conv_in.weight)


def test_a_separate_vae_takes_the_base_models_latent_scaling(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """A VAE folder converted without its config says SD 1.x's 0.18215; the denoiser's latents are SDXL's, and
    a folder and a file of the same weights must not give other latents."""
    other = build_tiny_sdxl_pipeline(seed=5).vae
    other.register_to_config(scaling_factor=0.18215)
    other.save_pretrained(tmp_path / "vae")
    base = load_model(tiny_sdxl_dir).vae.config.scaling_factor
    assert base != 0.18215
    assert load_model(tiny_sdxl_dir, vae=str(tmp_path / "vae")).vae.config.scaling_factor == base


def test_a_separate_vae_file_in_the_original_layout(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """Like sdxl_vae.safetensors / the fp16-fix VAE as one file: LDM key names."""
    other = build_tiny_sdxl_pipeline(seed=5).vae
    keys = {f"vae.{key}": value for key, value in other.state_dict().items()}
    ldm = {k: v.contiguous() for k, v in SDXL_LAYOUT.writer(keys).convert(keys).items()}
    assert all(key.startswith(VAE_PREFIX) for key in ldm)
    save_file({key.removeprefix(VAE_PREFIX): value for key, value in ldm.items()}, tmp_path / "vae.safetensors")
    model = load_model(tiny_sdxl_dir, vae=str(tmp_path / "vae.safetensors"))
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in other.state_dict().items())


def test_sdxl_files_are_refused_as_another_family(sdxl_single_file: Path, tiny_sdxl_dir: Path) -> None:
    with pytest.raises(UserError, match="SDXL"):
        load_model(tiny_sdxl_dir, model_type="sd15")
    with pytest.raises(UserError, match="SDXL"):
        load_model(sdxl_single_file, model_type="sd15")


def test_the_family_is_detected_from_the_files(sdxl_single_file: Path, tiny_sdxl_dir: Path) -> None:
    assert load_model(tiny_sdxl_dir).model_type == "sdxl"
    assert load_model(sdxl_single_file, config=str(tiny_sdxl_dir)).model_type == "sdxl"
