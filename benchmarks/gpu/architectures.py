"""The denoisers the GPU benchmark trains: real-size SD 1.5 and SDXL UNets, and tiny stand-ins for `--dry-run`.

SD 1.5's UNet config ships with the package (`onetrainer/model/configs/sd15`). SDXL's is written out
here as data, with the values of stable-diffusion-xl-base-1.0's `unet/config.json` (2.57 B
parameters), since the GPU machine has no network to fetch it. Weights are random: speed and memory
depend on shapes, not values.
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


@dataclass(frozen=True)
class Family:
    """One denoiser: its config, and the shapes of the conditioning a training batch feeds it."""

    name: str
    model_type: str
    """onetrainer's model type of this denoiser."""
    unet_config: dict[str, Any]
    context_dim: int
    pooled_dim: int | None = None
    """SDXL's pooled text embedding width (fed with the six size/crop numbers); None for SD 1.x."""

    @property
    def is_sdxl(self) -> bool:
        return self.pooled_dim is not None


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


def tiny(name: str) -> Family:
    """The tiny kit's UNet of the same family: same block types and conditioning, tiny widths."""
    from onetrainer.util.tiny.models import build_tiny_sd15_pipeline, build_tiny_sdxl_pipeline

    if name == "SDXL":
        unet = build_tiny_sdxl_pipeline(seed=0).unet
        config = dict(unet.config)
        time_inputs = 6 * config["addition_time_embed_dim"]
        pooled = config["projection_class_embeddings_input_dim"] - time_inputs
        return Family("SDXL", "sdxl", config, context_dim=config["cross_attention_dim"], pooled_dim=pooled)
    config = dict(build_tiny_sd15_pipeline(seed=0).unet.config)
    return Family("SD1.5", "sd15", config, context_dim=config["cross_attention_dim"])


def build_unet(family: Family, device: Any, seed: int = 0) -> Any:
    """The denoiser with reproducible random fp32 weights, initialised directly on `device`."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            return UNet2DConditionModel.from_config(family.unet_config)
