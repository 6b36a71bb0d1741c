"""Sampling through a family's own diffusers pipeline, built from the in-memory components.

New families do not re-write a denoising loop: the pipeline diffusers ships for the family is built
around the model's live denoiser (so trained LoRA layers take part) and fed the prompt embeddings the
family's conditioner computes (the same code that conditions training, so a preview shows what was
trained, trained embeddings included). Each image has its own seed (seed, seed + 1, ...) and its own
generator, so any one of a batch can be reproduced alone, and the same seed gives the same image as
the family's pipeline loaded by diffusers from our saved files.

During training the parts of a model may hold different dtypes (a bf16 UNet beside an fp32 VAE and
fully trained fp32 text encoders), which diffusers' pipelines do not expect: they run the denoiser in
the dtype of the prompt embeddings and decode in the denoiser's. So the pipeline gets no text
encoders (their embeddings arrive precomputed, cast to the denoiser's dtype) and returns latents,
which are decoded here in the VAE's own dtype, the way the pipelines decode them.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.model_sampler.schedulers import build_scheduler, check_scheduler
from onetrainer.model_sampler.sizes import check_side
from onetrainer.model_setup.placement import place
from onetrainer.util.errors import UserError
from onetrainer.util.family import Role

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from onetrainer.model.contracts import Conditioner, FamilyHooks, Progress
    from onetrainer.model.diffusion import DiffusionModel


class PromptEmbeds(Protocol):
    """The family's half of the pipeline call: the embedding arguments for one prompt pair."""

    def __call__(
        self, model: DiffusionModel, conditioner: Conditioner, prompt: str, negative_prompt: str, cfg: float
    ) -> dict[str, Any]:
        """Keyword arguments of the pipeline's `__call__` (`prompt_embeds=...`, `negative_prompt_embeds=...`, and
        settings such as a second guidance scale); tensors are cast to the denoiser's device and dtype."""
        ...


Decode = Callable[["DiffusionModel", "torch.Tensor"], "Image.Image"]
"""`decode(model, latents)` -> the image of one [1, C, h, w] latent the pipeline returned."""
Unpack = Callable[["torch.Tensor", int, int], "torch.Tensor"]
"""`unpack(latents, height, width)` -> [1, C, h, w]: the latents of a pipeline that returns them in the
denoiser's own layout (packed 2x2 patches) for an image of `height` x `width` pixels."""


def decode_latents(model: DiffusionModel, latents: torch.Tensor) -> Image.Image:
    """Latents -> image as diffusers' pipelines do it: unscale, decode, map [-1, 1] to 8 bits.

    A VAE stored in fp16 whose config says `force_upcast` (it overflows in fp16) decodes in fp32, as
    the pipelines do. Where the GPU has too little memory left beside a training run (a 1024 px decode
    takes gigabytes), the VAE decodes in CPU memory instead: slower, the same image.
    """
    import torch
    from PIL import Image

    vae = model.components[model.spec.vae.name]
    config = vae.config
    scaled = latents.float() / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    try:
        image = _decode(vae, scaled)
    except torch.cuda.OutOfMemoryError:
        home = next(vae.parameters()).device
        place(vae, "cpu")
        torch.cuda.empty_cache()
        try:
            image = _decode(vae, scaled)
        finally:
            place(vae, home)
    pixels = ((image[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(pixels)


def _decode(vae: Any, scaled: torch.Tensor) -> torch.Tensor:
    """The VAE's decoding of `scaled` latents where the VAE is, in fp32 when an fp16 VAE asks for it."""
    import torch

    stored = next(vae.parameters()).dtype
    upcast = stored == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        place(vae, next(vae.parameters()).device, torch.float32)
    try:
        parameter = next(vae.parameters())
        return vae.decode(scaled.to(parameter.device, parameter.dtype)).sample.float()
    finally:
        if upcast:
            place(vae, next(vae.parameters()).device, stored)


@contextlib.contextmanager
def moved_to(model: DiffusionModel, names: Sequence[str], device: torch.device) -> Iterator[None]:
    """The components `names` on `device` for the block, then back where they were: a cached run keeps its frozen
    text encoders and VAE in CPU memory, and a preview takes each to the GPU only while it runs (a 9 GB text
    encoder beside a denoising 12 B transformer would not fit a 12 GB card). A component split across devices
    is left alone (`single_device`)."""
    homes = {name: single_device(model.components[name]) for name in names}
    for name, home in homes.items():
        if home is not None:
            place(model.components[name], device)
    try:
        yield
    finally:
        for name, home in homes.items():
            if home is not None:
                place(model.components[name], home)


class PipelineSampler:
    """A `Sampler` for any family with a diffusers pipeline; the family gives its hooks and prompt embeds.

    `pipeline_settings` are constructor arguments the family fixes for previews (e.g. no watermark);
    `unpack` turns latents the pipeline returns in another layout into [1, C, h, w]; `decode` turns
    those into an image (default: `decode_latents`).
    """

    def __init__(
        self,
        model: DiffusionModel,
        *,
        hooks: FamilyHooks,
        prompt_embeds: PromptEmbeds,
        layer_skip: Mapping[str, int] | None = None,
        default_scheduler: str = "euler",
        pipeline_settings: Mapping[str, Any] | None = None,
        decode: Decode = decode_latents,
        unpack: Unpack | None = None,
    ) -> None:
        self.model = model
        self.hooks = hooks
        self.prompt_embeds = prompt_embeds
        self.layer_skip = dict(layer_skip or {})
        self.default_scheduler = default_scheduler
        self.pipeline_settings = dict(pipeline_settings or {})
        self.decode = decode
        self.unpack = unpack

    def default_size(self) -> int:
        """The family's training size, within what the denoiser's positional embedding reaches."""
        size = self.model.spec.resolution_for(self.model.prediction_type)
        limit = self.model.largest_side
        return size if limit is None else min(size, limit)

    def pipeline(self, scheduler: Any) -> Any:
        """The family's pipeline class around the model's denoiser and VAE, with `scheduler`.

        Text encoders and tokenizers are left out: the embeddings come precomputed.
        """
        spec = self.model.spec
        diffusers = importlib.import_module("diffusers")
        cls = getattr(diffusers, spec.pipeline_classes[0])
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs: dict[str, Any] = dict.fromkeys(accepted)
        for name, module in self.model.components.items():
            if spec.component(name).role is not Role.TEXT_ENCODER:
                kwargs[name] = module
        kwargs["scheduler"] = scheduler
        kwargs.update(self.model.pipeline_config)
        kwargs.update(self.pipeline_settings)
        pipe = cls(**{key: value for key, value in kwargs.items() if key in accepted})
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
        scheduler: str | None = None,
        count: int = 1,
        progress: Progress | None = None,
    ) -> list[Image.Image]:
        import torch

        objective = self.model.spec.objective
        name = check_scheduler(scheduler or self.default_scheduler, objective)
        step = self.model.spec.size_step
        limit = self.model.largest_side
        width = check_side("width", width or self.default_size(), step, model_limit=limit)
        height = check_side("height", height or self.default_size(), step, model_limit=limit)
        if steps < 1 or count < 1:
            raise UserError("steps and count must be at least 1")
        model = self.model
        modes = {name: module.training for name, module in model.modules()}
        for _, module in model.modules():
            module.eval()
        done = 0

        def tick(*_: Any) -> dict[str, Any]:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, steps * count)
            return {}

        try:
            pipe = self.pipeline(build_scheduler(name, model.noise_scheduler.config, objective))
            conditioner = self.hooks.conditioner(model, layer_skip=self.layer_skip, device=model.device)
            with moved_to(model, model.text_encoder_names(), model.device), torch.no_grad():
                embeds = self.prompt_embeds(model, conditioner, prompt, negative_prompt, cfg)
                embeds = {
                    key: value.to(model.device, model.denoiser_dtype) if isinstance(value, torch.Tensor) else value
                    for key, value in embeds.items()
                }
            with torch.no_grad():
                images = [
                    self._one(pipe, embeds, steps, cfg, seed + index, width, height, tick) for index in range(count)
                ]
        finally:
            for module_name, module in model.modules():
                module.train(modes[module_name])
        return images

    def _one(
        self,
        pipe: Any,
        embeds: dict[str, Any],
        steps: int,
        cfg: float,
        seed: int,
        width: int,
        height: int,
        tick: Callable[..., dict[str, Any]],
    ) -> Image.Image:
        import torch

        generator = torch.Generator("cpu").manual_seed(seed)
        result = pipe(
            **embeds,
            num_inference_steps=steps,
            guidance_scale=cfg,
            width=width,
            height=height,
            generator=generator,
            output_type="latent",
            callback_on_step_end=lambda pipe, step, timestep, kwargs: tick(),
        )
        latents = result.images if self.unpack is None else self.unpack(result.images, height, width)
        with moved_to(self.model, [self.model.spec.vae.name], self.model.device):
            return self.decode(self.model, latents)


def single_device(module: torch.nn.Module) -> torch.device | None:
    """The one device all of `module`'s weights are on, to put it back there after sampling; None for one split
    across devices, which sampling leaves alone: moving it whole would undo what split it (offloaded blocks,
    whose hooks copy them in; every CPU master would go to the GPU)."""
    devices = {param.device for param in module.parameters()}
    return devices.pop() if len(devices) == 1 else None
