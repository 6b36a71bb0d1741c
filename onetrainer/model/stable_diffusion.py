"""The in-memory Stable Diffusion 1.x / 2.x model: its components and what is trained on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onetrainer.util.enums import ModelType

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class StableDiffusionModel:
    """Everything a SD 1.x/2.x run needs, loaded once and shared by setup, sampler and saver.

    LoRA layers are injected into `unet` / `text_encoder` in place (through peft), and trained
    embeddings are rows appended to the text encoder's token embedding, so samplers and savers see
    the adapted model without extra plumbing; `adapters` records what was added, for the savers.
    """

    model_type: ModelType
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    prediction_type: str
    source: str
    adapters: dict[str, object] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.unet.device
