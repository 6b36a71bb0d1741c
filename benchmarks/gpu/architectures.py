"""The denoisers the GPU benchmark trains: real-size SD 1.5 and SDXL UNets and the FLUX.1-dev transformer,
and tiny stand-ins for `--dry-run`.

SD 1.5's UNet config ships with the package (`onetrainer/model/configs/sd15`). SDXL's and FLUX.1-dev's
are written out here as data, with the values of stable-diffusion-xl-base-1.0's `unet/config.json`
(2.57 B parameters) and FLUX.1-dev's `transformer/config.json` (11.9 B), since the GPU machine has no
network to fetch them. Weights are random: speed and memory depend on shapes, not values. The FLUX
transformer is built in bf16 directly on the device (its fp32 weights alone would be 48 GB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
"""stable-diffusion-xl-base-1.0's UNet (keys left at diffusers' defaults omitted)."""

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


def sd15() -> Family:
    from onetrainer.model.configs import config_dir

    config = json.loads((config_dir("sd15") / "unet" / "config.json").read_text(encoding="utf-8"))
    return Family("SD1.5", "sd15", config, context_dim=int(config["cross_attention_dim"]))


def sdxl() -> Family:
    time_inputs = 6 * SDXL_UNET["addition_time_embed_dim"]
    return Family(
        "SDXL",
        "sdxl",
        SDXL_UNET,
        context_dim=SDXL_UNET["cross_attention_dim"],
        pooled_dim=SDXL_UNET["projection_class_embeddings_input_dim"] - time_inputs,
    )


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
        unet = build_tiny_sdxl_pipeline(seed=0).unet
        config = dict(unet.config)
        time_inputs = 6 * config["addition_time_embed_dim"]
        pooled = config["projection_class_embeddings_input_dim"] - time_inputs
        return Family("SDXL", "sdxl", config, context_dim=config["cross_attention_dim"], pooled_dim=pooled)
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
