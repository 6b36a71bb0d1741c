"""Text-to-image sampling for Stable Diffusion 1.x / 2.x, with any adapters the model carries.

The denoising loop is written out rather than borrowed from diffusers' pipeline, because training
previews run on a model whose parts may hold different dtypes (a bf16 UNet beside an fp32 VAE) and
carry in-place LoRA layers and embeddings; it follows `StableDiffusionPipeline` step for step
(same noise draw, CFG batch order, scheduler calls and decoding), so the same seed gives the same
image as diffusers' own pipeline. Each image uses its own seed (seed, seed + 1, ...), so any one
of a batch can be reproduced alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from onetrainer.model_sampler.pipeline import moved_to
from onetrainer.model_sampler.schedulers import build_scheduler, check_scheduler
from onetrainer.model_sampler.sizes import check_side
from onetrainer.model_setup.stable_diffusion import TEXT_KEY, StableDiffusionHooks
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from onetrainer.model.contracts import Progress
    from onetrainer.model.diffusion import DiffusionModel


@register(ModuleKind.SAMPLER, "sd15", "sd2")
class StableDiffusionSampler:
    def __init__(self, model: DiffusionModel, *, layer_skip: Mapping[str, int] | None = None) -> None:
        self.model = model
        self.layer_skip = dict(layer_skip or {})

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.model.vae.config.block_out_channels) - 1)

    def default_size(self) -> int:
        """The UNet's native resolution: 512 for SD 1.x, 768 for SD 2.x-768, 64 for the tiny models."""
        return int(self.model.unet.config.sample_size) * self.vae_scale

    def sample(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int = 20,
        cfg: float = 7.0,
        seed: int = 42,
        width: int | None = None,
        height: int | None = None,
        scheduler: str | None = "ddim",
        count: int = 1,
        progress: Progress | None = None,
    ) -> list[Image.Image]:
        import torch

        scheduler = check_scheduler(scheduler or "ddim")
        width = check_side("width", width or self.default_size(), self.vae_scale)
        height = check_side("height", height or self.default_size(), self.vae_scale)
        if steps < 1 or count < 1:
            raise UserError("steps and count must be at least 1")
        was_training = self.model.unet.training, self.model.text_encoder.training
        self.model.unet.eval()
        self.model.text_encoder.eval()
        try:
            done = 0

            def tick() -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, steps * count)

            with torch.no_grad():
                context = self._prompt_embeddings(prompt, negative_prompt, cfg)
                images = []
                for index in range(count):
                    latents = self._denoise(context, steps, cfg, seed + index, width, height, scheduler, tick)
                    images.append(self._decode(latents))
        finally:
            self.model.unet.train(was_training[0])
            self.model.text_encoder.train(was_training[1])
        return images

    def _prompt_embeddings(self, prompt: str, negative_prompt: str, cfg: float) -> torch.Tensor:
        """[negative, positive] hidden states when CFG is on (diffusers' order), else [positive]."""
        import torch

        model = self.model
        conditioner = StableDiffusionHooks().conditioner(model, layer_skip=self.layer_skip, device=model.device)
        texts = [negative_prompt, prompt] if cfg > 1 else [prompt]
        with moved_to(model, ["text_encoder"], model.device):
            hidden = torch.cat([conditioner.encode_for_training([text])[TEXT_KEY] for text in texts])
        return hidden.to(model.denoiser_dtype)

    def _denoise(
        self,
        context: torch.Tensor,
        steps: int,
        cfg: float,
        seed: int,
        width: int,
        height: int,
        scheduler_name: str,
        tick: Callable[[], None],
    ) -> torch.Tensor:
        import torch

        unet = self.model.unet
        device, dtype = self.model.device, self.model.denoiser_dtype
        scheduler = build_scheduler(scheduler_name, self.model.noise_scheduler.config)
        scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (1, unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        latents = latents * scheduler.init_noise_sigma
        accepted = set(inspect.signature(scheduler.step).parameters)
        extra = {key: value for key, value in (("eta", 0.0), ("generator", generator)) if key in accepted}
        for timestep in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if cfg > 1 else latents
            model_input = scheduler.scale_model_input(model_input, timestep)
            noise = unet(model_input.to(dtype), timestep, encoder_hidden_states=context).sample.float()
            if cfg > 1:
                uncond, text = noise.chunk(2)
                noise = uncond + cfg * (text - uncond)
            latents = scheduler.step(noise, timestep, latents, **extra, return_dict=False)[0]
            tick()
        return latents

    def _decode(self, latents: torch.Tensor) -> Image.Image:
        import torch
        from PIL import Image

        vae = self.model.vae
        scaled = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        with moved_to(self.model, ["vae"], self.model.device):
            parameter = next(vae.parameters())
            image = vae.decode(scaled.to(parameter.device, parameter.dtype)).sample.float()
        pixels = ((image[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
