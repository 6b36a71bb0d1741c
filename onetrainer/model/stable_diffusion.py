"""The in-memory Stable Diffusion 1.x / 2.x model: its components and what is trained on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.util.enums import ModelType

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

WeightsStream = Callable[[bool, tuple[str, ...]], Iterator[tuple[str, "torch.Tensor"]]]
"""`stream(meta, components)` yields `(component.key, tensor)` in diffusers naming for the listed components."""


@dataclass
class StableDiffusionModel:
    """Everything a SD 1.x/2.x run needs, loaded once and shared by setup, sampler and saver.

    LoRA layers are injected into `unet` / `text_encoder` in place (through peft), and trained
    embeddings are looked up in front of the text encoder's token table, so samplers and savers see
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
    scheduler_class: str = "DDPMScheduler"
    """The scheduler class the source model shipped with, so a saved diffusers folder samples the same way."""

    @classmethod
    def from_pipeline(
        cls, pipe: Any, *, source: str, model_type: ModelType = ModelType.SD15, **replace: Any
    ) -> StableDiffusionModel:
        """Wrap a diffusers pipeline's components; `replace` swaps one (e.g. a bigger `unet`).

        Benchmarks and tools that build models in memory go through here, so they get the same
        object the loader returns without knowing its fields.
        """
        components: dict[str, Any] = {
            "unet": pipe.unet,
            "vae": pipe.vae,
            "text_encoder": pipe.text_encoder,
            "tokenizer": pipe.tokenizer,
            "noise_scheduler": pipe.scheduler,
            "prediction_type": pipe.scheduler.config.prediction_type,
        }
        components.update(replace)
        return cls(model_type=model_type, source=source, **components)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def unet_dtype(self) -> torch.dtype:
        """The dtype UNet inputs take: its first weight's (the frozen base's, under LoRA).

        diffusers' own `unet.dtype` walks every submodule looking for casting hooks, which costs
        milliseconds per call: too much for a per-step cast in training and sampling.
        """
        return next(self.unet.parameters()).dtype

    def component_configs(self) -> dict[str, dict[str, Any]]:
        """Each component's config as a diffusers folder holds it (scheduler with its class name)."""
        return {
            "unet": dict(self.unet.config),
            "vae": dict(self.vae.config),
            "text_encoder": self.text_encoder.config.to_dict(),
            "scheduler": {**self.noise_scheduler.config, "_class_name": self.scheduler_class},
        }

    def weights_stream(self) -> WeightsStream:
        """The base weights as `(component.key, tensor)` pairs, references not copies.

        `stream(meta, components)` can be replayed; with `meta` it yields data-less stand-ins, which
        is how writers plan a file header before writing. Injected LoRA layers are not base weights:
        a model carrying them has no plain stream, so this refuses (save the LoRA, or merge it first).
        """
        from onetrainer.util.errors import UserError

        components = ("unet", "vae", "text_encoder")
        state_dicts = {name: getattr(self, name).state_dict() for name in components}
        if any(".base_layer." in key for sd in state_dicts.values() for key in sd):
            raise UserError(
                "the model has LoRA layers injected, so its weights are not a plain base model",
                hint="Save the LoRA itself (kohya or peft format), or merge it into the weights first.",
            )

        def stream(meta: bool, wanted: tuple[str, ...] = components) -> Iterator[tuple[str, torch.Tensor]]:
            for name in wanted:
                for key, tensor in state_dicts[name].items():
                    yield f"{name}.{key}", tensor.to("meta") if meta else tensor

        return stream
