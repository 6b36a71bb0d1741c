"""The denoisers the GPU benchmark trains: real-size SD 1.5 and SDXL UNets, and tiny stand-ins for `--dry-run`.

Both real-size UNet configs ship with the package (`onetrainer/model/configs/sd15` and `sdxl`, the
latter stable-diffusion-xl-base-1.0's, 2.57 B parameters), so the GPU machine, which has no network,
needs nothing else. Weights are random: speed and memory depend on shapes, not values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


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


def tiny(name: str) -> Family:
    """The tiny kit's UNet of the same family: same block types and conditioning, tiny widths."""
    from onetrainer.util.tiny.models import build_tiny_sd15_pipeline, build_tiny_sdxl_pipeline

    if name == "SDXL":
        return _sdxl(dict(build_tiny_sdxl_pipeline(seed=0).unet.config))
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
