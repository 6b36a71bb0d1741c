"""The denoisers the GPU benchmark trains: real-size SD 1.5 and SDXL UNets, the FLUX.1-dev transformer and
the SD 3.5 Medium and Large MMDiTs, and tiny stand-ins for `--dry-run`.

The real-size UNet and SD 3.5 configs ship with the package (`onetrainer/model/configs/sd15`, `sdxl`, the
latter stable-diffusion-xl-base-1.0's, 2.57 B parameters, `sd35-medium`, 2.2 B, and `sd35-large`, 8.1 B);
FLUX.1-dev's transformer config is written out here as data, with the values of its
`transformer/config.json` (11.9 B), since the GPU machine has no network to fetch it. Weights are random:
speed and memory depend on shapes, not values. The transformers are built in bf16 directly on the device
(FLUX.1's fp32 weights alone would be 48 GB, SD 3.5 Large's 32 GB).
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
SD3_T5_TOKENS = 256
"""T5 tokens per caption for SD 3.5: `t5_max_length` of the presets (and diffusers' pipeline's default)."""
SD3_TYPES = {"SD3.5-medium": "sd35-medium", "SD3.5-large": "sd35-large"}
"""Benchmark family -> onetrainer's model type, for the SD 3.5 MMDiTs."""


@dataclass(frozen=True)
class Family:
    """One denoiser: its config, and the shapes of the conditioning a training batch feeds it."""

    name: str
    model_type: str
    """onetrainer's model type of this denoiser."""
    unet_config: dict[str, Any]
    context_dim: int
    pooled_dim: int | None = None
    """SDXL's pooled text embedding width (fed with the six size/crop numbers), FLUX's CLIP pooled width,
    SD 3's two CLIP pooled widths together; None for SD 1.x."""
    kind: str = "unet"
    """"unet", "flux" (a transformer on packed 16-channel latents, conditioned on T5 and CLIP pooled) or "sd3"
    (an MMDiT on 16-channel latents, conditioned on CLIP-L, bigG and T5 states and both CLIPs' pooled)."""
    clip_widths: tuple[int, int] = (0, 0)
    """SD 3's CLIP-L and bigG widths: each one's hidden states and pooled output (CLIP-L's unprojected, bigG's
    projected to the same width)."""

    @property
    def is_sdxl(self) -> bool:
        return self.kind == "unet" and self.pooled_dim is not None

    @property
    def is_flux(self) -> bool:
        return self.kind == "flux"

    @property
    def is_sd3(self) -> bool:
        return self.kind == "sd3"


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


def sd35(name: str) -> Family:
    """An SD 3.5 MMDiT from its shipped transformer config; the CLIP widths from the shipped encoders'."""
    from onetrainer.model.configs import config_dir

    folder = config_dir(SD3_TYPES[name])

    def read(part: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((folder / part / "config.json").read_text(encoding="utf-8"))
        return config

    widths = (int(read("text_encoder")["hidden_size"]), int(read("text_encoder_2")["hidden_size"]))
    return _sd3(name, read("transformer"), widths)


def _sd3(name: str, config: dict[str, Any], clip_widths: tuple[int, int]) -> Family:
    return Family(
        name,
        SD3_TYPES[name],
        config,
        context_dim=config["joint_attention_dim"],
        pooled_dim=config["pooled_projection_dim"],
        kind="sd3",
        clip_widths=clip_widths,
    )


def real(name: str) -> Family:
    if name in SD3_TYPES:
        return sd35(name)
    return {"SD1.5": sd15, "SDXL": sdxl, "FLUX.1-dev": flux_dev}[name]()


def tiny(name: str) -> Family:
    """The tiny kit's denoiser of the same family: same block types and conditioning, tiny widths."""
    from onetrainer.util.tiny.models import (
        build_tiny_flux_pipeline,
        build_tiny_pipeline,
        build_tiny_sd15_pipeline,
        build_tiny_sdxl_pipeline,
    )

    if name in SD3_TYPES:
        pipeline = build_tiny_pipeline(SD3_TYPES[name], 0)
        widths = (int(pipeline.text_encoder.config.hidden_size), int(pipeline.text_encoder_2.config.hidden_size))
        return _sd3(name, dict(pipeline.transformer.config), widths)
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
    FLUX and SD 3 transformers in bf16 (never staged in fp32)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            if family.kind == "unet":
                return UNet2DConditionModel.from_config(family.unet_config)
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                transformer = FluxTransformer2DModel if family.is_flux else SD3Transformer2DModel
                return transformer.from_config(family.unet_config)
            finally:
                torch.set_default_dtype(default)
