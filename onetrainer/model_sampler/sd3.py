"""SD 3 sampling through diffusers' `StableDiffusion3Pipeline`, fed the conditioner's embeddings.

The prompt embeddings are the training conditioner's (`model_setup.sd3`), joined as the pipeline joins
them, so previews see trained embeddings and text-encoder LoRAs, and a model without T5 samples with
zeros in its place, as the pipeline does. With cfg above 1 the negative prompt is encoded the same way
(an empty one as "", as the pipeline encodes it). 3.5 Medium's skip-layer guidance is an option
(`model.options.skip_layer_guidance`, its layers and its start and stop), passed to the pipeline, which
applies it on the steps in that range when cfg is above 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onetrainer.model.sd3 import sd3_options
from onetrainer.model_sampler.pipeline import PipelineSampler
from onetrainer.model_setup.sd3 import Sd3Hooks, assemble
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    from onetrainer.model.contracts import Conditioner
    from onetrainer.model.diffusion import DiffusionModel


def sd3_prompt_embeds(
    model: DiffusionModel, conditioner: Conditioner, prompt: str, negative_prompt: str, cfg: float
) -> dict[str, Any]:
    device, dtype = model.device, model.denoiser_dtype
    embeds: dict[str, Any] = {}
    embeds["prompt_embeds"], embeds["pooled_prompt_embeds"] = assemble(
        model, conditioner.encode_for_training([prompt]), device, dtype
    )
    if cfg <= 1:
        return embeds
    embeds["negative_prompt_embeds"], embeds["negative_pooled_prompt_embeds"] = assemble(
        model, conditioner.encode_for_training([negative_prompt]), device, dtype
    )
    options = sd3_options(model.spec, model.options)
    scale = float(getattr(options, "skip_layer_guidance", 0.0))
    if scale > 0:
        embeds["skip_guidance_layers"] = list(options.skip_layer_guidance_layers)
        embeds["skip_layer_guidance_scale"] = scale
        embeds["skip_layer_guidance_start"] = float(options.skip_layer_guidance_start)
        embeds["skip_layer_guidance_stop"] = float(options.skip_layer_guidance_stop)
    return embeds


@register(ModuleKind.SAMPLER, "sd35-large", "sd35-medium", "sd3-medium")
def sd3_sampler(model: DiffusionModel, *, layer_skip: Mapping[str, int] | None = None) -> PipelineSampler:
    return PipelineSampler(
        model, hooks=Sd3Hooks(), prompt_embeds=sd3_prompt_embeds, layer_skip=layer_skip, default_scheduler="euler"
    )
