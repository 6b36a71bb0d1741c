"""The SD 1.x / 2.x hooks of the shared diffusion setup: CLIP conditioning, and how the UNet is called.

The UNet is conditioned on one CLIP text encoder's hidden states: the last layer by default, an
earlier one with `layer_skip` (A1111's clip skip minus one), normalised by the final layer norm as the
original SD code does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from onetrainer.model_setup.conditioning import TextConditioner
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Batch
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig

TEXT_KEY = "text_hidden"


class StableDiffusionHooks:
    def conditioner(
        self, model: DiffusionModel, *, layer_skip: Mapping[str, int], device: torch.device
    ) -> TextConditioner:
        skip = int(layer_skip.get("text_encoder", 0))

        def encode(model: DiffusionModel, captions: list[str]) -> dict[str, torch.Tensor]:
            from onetrainer.model.clip_text import encode_tokens, tokenize

            ids = tokenize(model.tokenizer, captions, model.adapters.embeddings)
            return {TEXT_KEY: encode_tokens(model.text_encoder, ids, 1 + skip)}

        return TextConditioner(model, device, encode, output_keys=(TEXT_KEY,), settings=f"skip{skip}")

    def denoise(
        self,
        model: DiffusionModel,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> torch.Tensor:
        dtype = model.denoiser_dtype
        text = conditioning[TEXT_KEY].to(noisy.device, dtype, non_blocking=True)
        prediction: torch.Tensor = model.unet(noisy.to(dtype), timesteps, encoder_hidden_states=text).sample
        return prediction

    def example_inputs(
        self, model: DiffusionModel, batch_size: int, height: int, width: int, device: torch.device | str
    ) -> tuple[dict[str, torch.Tensor], Batch]:
        """Conditioning (and batch extras) of the shapes a training step feeds `denoise`, for the memory estimate."""
        import torch

        tokens = int(model.text_encoder.config.max_position_embeddings)
        width_ = int(model.unet.config.cross_attention_dim)
        return {TEXT_KEY: torch.zeros(batch_size, tokens, width_, device=device)}, {}


@register(ModuleKind.SETUP, "sd15", "sd2")
def stable_diffusion_setup(model: DiffusionModel, config: TrainConfig) -> DiffusionSetup:
    return DiffusionSetup(model, config, StableDiffusionHooks())
