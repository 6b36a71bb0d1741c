from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from transformers import CLIPTextModelWithProjection

from onetrainer.util.tiny.models import (
    build_tiny_pipeline,
    build_tiny_sd2_pipeline,
    build_tiny_sd15_pipeline,
    build_tiny_sdxl_pipeline,
    save_tiny_model,
)

FIXTURE_BY_KIND = {
    "sd15": "tiny_sd15_dir",
    "sd2": "tiny_sd2_eps_dir",
    "sd2-v": "tiny_sd2_dir",
    "sdxl": "tiny_sdxl_dir",
}
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _state(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": tensor
        for name in WEIGHTED_COMPONENTS
        if getattr(pipe, name, None) is not None
        for key, tensor in getattr(pipe, name).state_dict().items()
    }


def _assert_identical(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    mismatched = [key for key in left if not torch.equal(left[key], right[key])]
    assert not mismatched


def _load(path: Path) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", FIXTURE_BY_KIND)
def test_saved_folder_reloads_with_identical_tensors(kind: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(FIXTURE_BY_KIND[kind])
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    _assert_identical(_state(_load(path)), _state(build_tiny_pipeline(kind)))


@pytest.mark.parametrize("kind", FIXTURE_BY_KIND)
def test_two_step_sample_at_64px(kind: str, request: pytest.FixtureRequest) -> None:
    pipe = _load(request.getfixturevalue(FIXTURE_BY_KIND[kind]))
    images = pipe(
        "a red circle",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()


def test_same_seed_gives_bit_identical_weights_and_another_seed_differs() -> None:
    first, again, other = (_state(build_tiny_sd15_pipeline(seed)) for seed in (0, 0, 1))
    _assert_identical(first, again)
    assert not torch.equal(first["unet.conv_in.weight"], other["unet.conv_in.weight"])


def test_building_leaves_the_global_rng_stream_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_sd15_pipeline()
    assert torch.equal(torch.rand(4), expected)


def test_text_encoder_is_sized_and_framed_by_the_tokenizer() -> None:
    pipe = build_tiny_sd15_pipeline()
    config = pipe.text_encoder.config
    assert config.vocab_size == len(pipe.tokenizer) == 1514
    assert config.bos_token_id == pipe.tokenizer.bos_token_id
    assert config.eos_token_id == 2  # the released CLIP configs' old value, which the loader corrects for pooling
    assert config.hidden_act == "quick_gelu"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"


def test_vae_downscales_64px_images_to_8x8_latents() -> None:
    vae = build_tiny_sd15_pipeline().vae
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


@pytest.mark.parametrize(("v_prediction", "prediction_type"), [(True, "v_prediction"), (False, "epsilon")])
def test_sd2_has_sd2_structure(v_prediction: bool, prediction_type: str) -> None:
    pipe = build_tiny_sd2_pipeline(v_prediction=v_prediction)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.config.use_linear_projection is True
    assert tuple(pipe.unet.config.attention_head_dim) == (2, 4)
    assert pipe.text_encoder.config.hidden_act == "gelu"
    assert pipe.scheduler.config.prediction_type == prediction_type
    # Linear projections store 2-D weights where SD 1.5's conv projections store 4-D ones.
    assert pipe.unet.state_dict()["down_blocks.0.attentions.0.proj_in.weight"].ndim == 2


def test_sdxl_has_two_text_encoders_feeding_one_context() -> None:
    pipe = build_tiny_sdxl_pipeline()
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == widths
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.tokenizer_2 is not pipe.tokenizer


def test_save_refuses_an_existing_folder_unless_overwriting(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    with pytest.raises(FileExistsError):
        save_tiny_model("sd15", target)
    assert save_tiny_model("sd15", target, overwrite=True) == target
    assert (target / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="sd15"):
        build_tiny_pipeline("zeta")
