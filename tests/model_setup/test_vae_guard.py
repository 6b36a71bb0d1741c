"""A VAE that returns NaN latents is stopped before anything caches or trains on them, with the usual cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.data_loader import build_data_loader
from onetrainer.model_setup.encoders import NonFiniteLatents, VaeImageEncoder
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline


def _nan_vae(dtype: torch.dtype) -> torch.nn.Module:
    """The tiny SDXL VAE (config says force_upcast) with one weight NaN, as an overflowing fp16 VAE ends up."""
    vae = build_tiny_sdxl_pipeline().vae
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    return vae.to(dtype)


def test_nan_latents_in_fp16_name_the_dtype_and_the_fix() -> None:
    encoder = VaeImageEncoder(_nan_vae(torch.float16), torch.device("cpu"), torch.float16, part="vae")
    with pytest.raises(NonFiniteLatents) as caught:
        encoder.encode(torch.zeros(2, 3, 64, 64))
    error = caught.value
    assert error.exit_code == 2
    assert "float16" in error.message
    assert "2 of 2 images" in error.message
    assert error.where == "parts.vae"
    hint = error.hint or ""
    assert "force_upcast" in hint
    assert "parts.vae.weight_dtype=fp32 or bf16" in hint
    assert "model.vae=" in hint


def test_nan_latents_in_fp32_point_at_the_weights() -> None:
    encoder = VaeImageEncoder(_nan_vae(torch.float32), torch.device("cpu"), torch.float32)
    with pytest.raises(NonFiniteLatents) as caught:
        encoder.encode_tensor(torch.zeros(1, 3, 64, 64))
    assert "damaged" in (caught.value.hint or "")


def test_finite_latents_pass() -> None:
    vae = build_tiny_sdxl_pipeline().vae
    latents = VaeImageEncoder(vae, torch.device("cpu"), torch.float32).encode(torch.zeros(1, 3, 64, 64))["latents"]
    assert latents.shape == (1, 4, 8, 8)
    assert torch.isfinite(latents).all()


def test_the_caching_pass_stops_and_caches_nothing(shapes_dataset_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig.model_validate(
        {
            "model": {"type": "sdxl", "base": "tiny:sdxl"},
            "workspace": str(tmp_path / "workspace"),
            "data": {"resolution": 64, "workers": 0, "concepts": [{"path": str(shapes_dataset_dir)}]},
        }
    )
    encoder = VaeImageEncoder(_nan_vae(torch.float16), torch.device("cpu"), torch.float16)
    with build_data_loader(config, image_encoder=encoder, quantisation=64) as loader, pytest.raises(NonFiniteLatents):
        loader.fill_cache()
    assert not list((tmp_path / "workspace" / "cache").rglob("*.safetensors")), "no NaN entry was cached"


def test_the_cache_identity_changes_with_the_latent_scaling_of_the_same_weights() -> None:
    """SD's VAE scales latents by 0.18215, SDXL's by 0.13025: one set of weights under either config encodes to
    other latents, so a shared cache must not take one's entries for the other's."""
    vae = build_tiny_sdxl_pipeline().vae
    identities = set()
    for scaling, shift in ((0.18215, None), (0.13025, None), (0.13025, 0.0609)):
        vae.register_to_config(scaling_factor=scaling, shift_factor=shift)
        identities.add(VaeImageEncoder(vae, torch.device("cpu"), torch.float32).identity())
    assert len(identities) == 3
