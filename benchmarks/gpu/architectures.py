"""The denoisers the GPU benchmark trains: real-size SD 1.5 and SDXL UNets and the FLUX.1-dev transformer,
and tiny stand-ins for `--dry-run`.

The real-size UNet configs ship with the package (`onetrainer/model/configs/sd15` and `sdxl`, the
latter stable-diffusion-xl-base-1.0's, 2.57 B parameters); FLUX.1-dev's transformer config is written out
here as data, with the values of its `transformer/config.json` (11.9 B), since the GPU machine has no
network to fetch it. Weights are random: speed and memory depend on shapes, not values. The FLUX
transformer is built in bf16 directly on the device (its fp32 weights alone would be 48 GB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
"""FLUX.1-dev's transformer (`FluxTransformer2DModel`)."""
FLUX_T5_TOKENS = 512


@dataclass(frozen=True)
class Family:
    """One denoiser: its config, and the shapes of the conditioning a training batch feeds it."""

    name: str
    model_type: str
    """onetrainer's model type of this denoiser."""
    unet_config: dict[str, Any]
    context_dim: int
    pooled_dim: int | None = None
    """SDXL's pooled text embedding width (fed with the six size/crop numbers), FLUX's CLIP pooled width;
    None for SD 1.x."""
    kind: str = "unet"
    """"unet" or "flux" (a transformer on packed 16-channel latents, conditioned on T5 and CLIP pooled)."""

    @property
    def is_sdxl(self) -> bool:
        return self.kind == "unet" and self.pooled_dim is not None

    @property
    def is_flux(self) -> bool:
        return self.kind == "flux"


def _shipped_unet(name: str) -> dict[str, Any]:
    from onetrainer.model.configs import config_dir

    config: dict[str, Any] = json.loads((config_dir(name) / "unet" / "config.json").read_text(encoding="utf-8"))
    return config


def sd15() -> Family:
    config = _shipped_unet("sd15")
    return Family("SD1.5", "sd15", config, context_dim=int(config["cross_attention_dim"]))


def sdxl() -> Family:
    return _sdxl(_shipped_unet("sdxl"))


def _sdxl(config: dict[str, Any]) -> Family:
    """SDXL's pooled width is what its added conditioning takes besides the six size numbers."""
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    return Family("SDXL", "sdxl", config, context_dim=config["cross_attention_dim"], pooled_dim=pooled)


def flux_dev() -> Family:
    return Family(
        "FLUX.1-dev",
        "flux-dev",
        FLUX_DEV_TRANSFORMER,
        context_dim=FLUX_DEV_TRANSFORMER["joint_attention_dim"],
        pooled_dim=FLUX_DEV_TRANSFORMER["pooled_projection_dim"],
        kind="flux",
    )


def real(name: str) -> Family:
    return {"SD1.5": sd15, "SDXL": sdxl, "FLUX.1-dev": flux_dev}[name]()


def tiny(name: str) -> Family:
    """The tiny kit's denoiser of the same family: same block types and conditioning, tiny widths."""
    from onetrainer.util.tiny.models import build_tiny_flux_pipeline, build_tiny_sd15_pipeline, build_tiny_sdxl_pipeline

    if name == "FLUX.1-dev":
        config = dict(build_tiny_flux_pipeline(seed=0).transformer.config)
        return Family(
            name,
            "flux-dev",
            config,
            context_dim=config["joint_attention_dim"],
            pooled_dim=config["pooled_projection_dim"],
            kind="flux",
        )
    if name == "SDXL":
        return _sdxl(dict(build_tiny_sdxl_pipeline(seed=0).unet.config))
    config = dict(build_tiny_sd15_pipeline(seed=0).unet.config)
    return Family("SD1.5", "sd15", config, context_dim=config["cross_attention_dim"])


def build_unet(family: Family, device: Any, seed: int = 0) -> Any:
    """The denoiser with reproducible random weights, initialised directly on `device`: a UNet in fp32, the
    FLUX transformer in bf16 (never staged in fp32)."""
    import torch
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            if not family.is_flux:
                return UNet2DConditionModel.from_config(family.unet_config)
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                return FluxTransformer2DModel.from_config(family.unet_config)
            finally:
                torch.set_default_dtype(default)
