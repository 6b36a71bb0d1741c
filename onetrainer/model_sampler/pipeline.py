"""Sampling through a family's own diffusers pipeline, built from the in-memory components.

New families do not re-write a denoising loop: the pipeline diffusers ships for the family is built
around the model's live components (so trained LoRA layers and embeddings take part), and fed the
prompt embeddings the family's conditioner computes (the same code that conditions training, so a
preview shows what was trained). Each image has its own seed (seed, seed + 1, ...) and its own
generator, so any one of a batch can be reproduced alone, and the same seed gives the same image as
the family's pipeline loaded by diffusers from our saved files.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.model_sampler.schedulers import build_scheduler, check_scheduler
from onetrainer.model_sampler.sizes import check_side
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from onetrainer.model.contracts import Conditioner, FamilyHooks, Progress
    from onetrainer.model.diffusion import DiffusionModel


class PromptEmbeds(Protocol):
    """The family's half of the pipeline call: the embedding arguments for one prompt pair."""

    def __call__(
        self, model: DiffusionModel, conditioner: Conditioner, prompt: str, negative_prompt: str, cfg: float
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments of the pipeline's `__call__` (`prompt_embeds=...`, `negative_prompt_embeds=...`)."""
        ...


class PipelineSampler:
    """A `Sampler` for any family with a diffusers pipeline; the family gives its hooks and prompt embeds."""

    def __init__(
        self,
        model: DiffusionModel,
        *,
        hooks: FamilyHooks,
        prompt_embeds: PromptEmbeds,
        layer_skip: Mapping[str, int] | None = None,
        default_scheduler: str = "euler",
    ) -> None:
        self.model = model
        self.hooks = hooks
        self.prompt_embeds = prompt_embeds
        self.layer_skip = dict(layer_skip or {})
        self.default_scheduler = default_scheduler

    def default_size(self) -> int:
        return self.model.spec.resolution_for(self.model.prediction_type)

    def pipeline(self, scheduler: Any) -> Any:
        """The family's pipeline class around the model's live components, with `scheduler`."""
        spec = self.model.spec
        diffusers = importlib.import_module("diffusers")
        cls = getattr(diffusers, spec.pipeline_classes[0])
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs: dict[str, Any] = dict.fromkeys(accepted)
        kwargs.update(self.model.components)
        kwargs.update(self.model.tokenizers)
        kwargs["scheduler"] = scheduler
        settings = {key: value for key, value in self.model.pipeline_config.items() if key in accepted}
        kwargs.update(settings)
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

        name = check_scheduler(scheduler or self.default_scheduler)
        step = self.model.spec.size_step
        width = check_side("width", width or self.default_size(), step)
        height = check_side("height", height or self.default_size(), step)
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
            pipe = self.pipeline(build_scheduler(name, model.noise_scheduler.config))
            conditioner = self.hooks.conditioner(model, layer_skip=self.layer_skip, device=model.device)
            conditioner.load()
            with torch.no_grad():
                embeds = self.prompt_embeds(model, conditioner, prompt, negative_prompt, cfg)
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
        embeds: dict[str, torch.Tensor],
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
            output_type="pil",
            callback_on_step_end=lambda pipe, step, timestep, kwargs: tick(),
        )
        image: Image.Image = result.images[0]
        return image
