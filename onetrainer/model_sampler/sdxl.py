"""SDXL sampling through diffusers' `StableDiffusionXLPipeline`, fed the conditioner's embeddings.

The prompt embeddings are the training conditioner's (`model_setup.sdxl`), so previews see trained
embeddings and text-encoder LoRAs. An empty negative prompt follows the model's
`force_zeros_for_empty_prompt` (true for SDXL 1.0): the unconditional embeddings are zeros, as
diffusers' pipeline makes them when it is given no negative prompt; a non-empty one is encoded like
the prompt. Size conditioning is the pipeline's default for text-to-image (original size = target
size = the image size, crop (0, 0)), and no invisible watermark is stamped on previews.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from onetrainer.model_sampler.pipeline import PipelineSampler
from onetrainer.model_setup.sdxl import POOLED_KEY, TEXT_KEY, SdxlHooks
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Conditioner
    from onetrainer.model.diffusion import DiffusionModel


def sdxl_prompt_embeds(
    model: DiffusionModel, conditioner: Conditioner, prompt: str, negative_prompt: str, cfg: float
) -> dict[str, torch.Tensor]:
    import torch

    positive = conditioner.encode_for_training([prompt])
    embeds = {"prompt_embeds": positive[TEXT_KEY], "pooled_prompt_embeds": positive[POOLED_KEY]}
    if cfg <= 1:
        return embeds
    if not negative_prompt and model.pipeline_config.get("force_zeros_for_empty_prompt", False):
        negative = {key: torch.zeros_like(value) for key, value in positive.items()}
    else:
        negative = conditioner.encode_for_training([negative_prompt])
    embeds["negative_prompt_embeds"] = negative[TEXT_KEY]
    embeds["negative_pooled_prompt_embeds"] = negative[POOLED_KEY]
    return embeds


@register(ModuleKind.SAMPLER, "sdxl")
def sdxl_sampler(model: DiffusionModel, *, layer_skip: Mapping[str, int] | None = None) -> PipelineSampler:
    return PipelineSampler(
        model,
        hooks=SdxlHooks(),
        prompt_embeds=sdxl_prompt_embeds,
        layer_skip=layer_skip,
        default_scheduler="euler",
        pipeline_settings={"add_watermarker": False},
    )
