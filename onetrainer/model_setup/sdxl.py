"""The SDXL hooks of the shared diffusion setup: two-encoder conditioning and the size-conditioned UNet call.

Conditioning, as diffusers' SDXL pipeline computes it: each caption goes through CLIP ViT-L and
OpenCLIP bigG (each with its own tokenizer, and trained embeddings on both); the hidden states of the
penultimate layer (`layer_skip` more layers back), WITHOUT the final layer norm, are concatenated along
the width into the UNet's context, and bigG's projected pooled output (`text_embeds`) is the pooled
conditioning. The UNet also takes six numbers per sample through `added_cond_kwargs["time_ids"]`:
original size, crop top-left and target size, each (h, w), which the data loader supplies from the
crop it actually applied (`original_size`, `crop_top_left`, `target_size` in the batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from onetrainer.model.contracts import Share
from onetrainer.model_setup.conditioning import TextConditioner
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Batch
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig

TEXT_KEY = "text_hidden"
"""[B, 77, 768 + 1280]: both encoders' hidden states, concatenated (CLIP-L first)."""
POOLED_KEY = "pooled"
"""[B, 1280]: OpenCLIP bigG's projected pooled output."""
ENCODERS = ("text_encoder", "text_encoder_2")
POOLED_ENCODER = "text_encoder_2"
MICRO_CONDITIONING = ("original_size", "crop_top_left", "target_size")
"""The batch keys of the UNet's `time_ids`, in the order SDXL was trained with."""


def encode_sdxl(model: DiffusionModel, captions: list[str], skips: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Captions -> {TEXT_KEY, POOLED_KEY}; `skips[encoder]` layers before the penultimate one."""
    import torch

    from onetrainer.model.clip_text import clip_outputs, tokenize

    hidden = []
    pooled: torch.Tensor | None = None
    for name in ENCODERS:
        ids = tokenize(model.tokenizer_for(name), captions, model.adapters.embeddings)
        states, pool = clip_outputs(model.components[name], ids, 2 + int(skips.get(name, 0)), final_norm=False)
        hidden.append(states)
        if name == POOLED_ENCODER:
            pooled = pool
    assert pooled is not None
    return {TEXT_KEY: torch.cat(hidden, dim=-1), POOLED_KEY: pooled}


def time_ids(batch: Batch) -> torch.Tensor:
    """[B, 6] size conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w) per sample."""
    import torch

    return torch.cat([batch[key] for key in MICRO_CONDITIONING], dim=1)


def sources(model: DiffusionModel) -> dict[str, tuple[str | Share, ...]]:
    """Each encoder's channels of the joined hidden states (CLIP-L's first), and bigG's pooled output: what
    OneTrainer zeroes to drop one encoder's conditioning."""
    first, second = (int(model.components[name].config.hidden_size) for name in ENCODERS)
    return {
        ENCODERS[0]: (Share(TEXT_KEY, (0, first)),),
        ENCODERS[1]: (Share(TEXT_KEY, (first, first + second)), POOLED_KEY),
    }


class SdxlHooks:
    def conditioner(
        self, model: DiffusionModel, *, layer_skip: Mapping[str, int], device: torch.device
    ) -> TextConditioner:
        skips = {name: int(layer_skip.get(name, 0)) for name in ENCODERS}

        def encode(model: DiffusionModel, captions: list[str]) -> dict[str, torch.Tensor]:
            return encode_sdxl(model, captions, skips)

        settings = "penultimate-skip" + ",".join(str(skips[name]) for name in ENCODERS)
        return TextConditioner(
            model, device, encode, output_keys=(TEXT_KEY, POOLED_KEY), settings=settings, sources=sources(model)
        )

    def denoise(
        self,
        model: DiffusionModel,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> torch.Tensor:
        dtype = model.denoiser_dtype
        device = noisy.device
        added = {
            "text_embeds": conditioning[POOLED_KEY].to(device, dtype, non_blocking=True),
            "time_ids": time_ids(batch).to(device, dtype, non_blocking=True),
        }
        text = conditioning[TEXT_KEY].to(device, dtype, non_blocking=True)
        prediction: torch.Tensor = model.unet(
            noisy.to(dtype), timesteps, encoder_hidden_states=text, added_cond_kwargs=added
        ).sample
        return prediction

    def example_inputs(
        self, model: DiffusionModel, batch_size: int, height: int, width: int, device: torch.device | str
    ) -> tuple[dict[str, torch.Tensor], Batch]:
        """Conditioning (and batch extras) of the shapes a training step feeds `denoise`, for the memory estimate."""
        import torch

        encoders = [model.components[name].config for name in ENCODERS]
        tokens = int(encoders[0].max_position_embeddings)
        hidden = sum(int(config.hidden_size) for config in encoders)
        pooled = int(model.components[POOLED_ENCODER].config.projection_dim)
        size = torch.tensor([(height, width)] * batch_size, device=device)
        conditioning = {
            TEXT_KEY: torch.zeros(batch_size, tokens, hidden, device=device),
            POOLED_KEY: torch.zeros(batch_size, pooled, device=device),
        }
        return conditioning, {"original_size": size, "crop_top_left": torch.zeros_like(size), "target_size": size}


@register(ModuleKind.SETUP, "sdxl")
def sdxl_setup(model: DiffusionModel, config: TrainConfig) -> DiffusionSetup:
    return DiffusionSetup(model, config, SdxlHooks())
