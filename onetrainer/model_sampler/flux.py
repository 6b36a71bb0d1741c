"""FLUX.1 sampling through diffusers' `FluxPipeline`, fed the conditioner's embeddings.

The prompt embeddings (T5 hidden states, CLIP-L pooled output) are the training conditioner's
(`model_setup.flux`), so previews see trained embeddings and text-encoder LoRAs, with the model's T5
length. A prompt's `cfg` is what `FluxPipeline` calls `guidance_scale`: dev's distilled guidance
(about 3.5 is typical), ignored by schnell. Real classifier-free guidance is the option
`model.options.true_cfg`: above 1, with a negative prompt, the pipeline also runs the transformer on
the negative prompt's embeddings and extrapolates (`true_cfg_scale`), at twice the cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onetrainer.model.flux import flux_options
from onetrainer.model_sampler.pipeline import PipelineSampler
from onetrainer.model_setup.flux import POOLED_KEY, TEXT_KEY, FluxHooks, unpack
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Conditioner
    from onetrainer.model.diffusion import DiffusionModel


def flux_prompt_embeds(
    model: DiffusionModel, conditioner: Conditioner, prompt: str, negative_prompt: str, cfg: float
) -> dict[str, Any]:
    positive = conditioner.encode_for_training([prompt])
    embeds: dict[str, Any] = {"prompt_embeds": positive[TEXT_KEY], "pooled_prompt_embeds": positive[POOLED_KEY]}
    true_cfg = float(flux_options(model.spec, model.options).true_cfg)
    if true_cfg > 1 and negative_prompt:
        negative = conditioner.encode_for_training([negative_prompt])
        embeds["negative_prompt_embeds"] = negative[TEXT_KEY]
        embeds["negative_pooled_prompt_embeds"] = negative[POOLED_KEY]
        embeds["true_cfg_scale"] = true_cfg
    return embeds


def unpack_pixels(model: DiffusionModel) -> Any:
    """The pipeline's packed latents [1, hw/4, 64] -> [1, 16, h, w] for an image of height x width pixels."""
    scale = model.spec.latent_scale

    def unpack_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return unpack(latents, height // scale, width // scale)

    return unpack_latents


@register(ModuleKind.SAMPLER, "flux-dev", "flux-schnell")
def flux_sampler(model: DiffusionModel, *, layer_skip: Mapping[str, int] | None = None) -> PipelineSampler:
    return PipelineSampler(
        model,
        hooks=FluxHooks(),
        prompt_embeds=flux_prompt_embeds,
        layer_skip=layer_skip,
        default_scheduler="euler",
        unpack=unpack_pixels(model),
    )
