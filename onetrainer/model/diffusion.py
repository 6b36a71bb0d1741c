"""The in-memory model of every family: its components by name, its tokenizers, its noise schedule.

Components are named as the family's diffusers pipeline names them (`unet`, `text_encoder_2`,
`transformer`, `vae`) and their roles come from the family spec, so shared code (adapters, placement,
savers) works by role and name, and a family's own code can still write `model.unet`. LoRA layers are
injected into the components in place (through peft) and trained embeddings are looked up in front
of the text encoders' token tables, so samplers and savers see the adapted model without plumbing;
`adapters` records what was added, for the savers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec

if TYPE_CHECKING:
    import torch

    from onetrainer.model.adapters.embedding import EmbeddingAdapter
    from onetrainer.model.adapters.lora import LoraAdapter

WeightsStream = Callable[[bool, tuple[str, ...]], Iterator[tuple[str, "torch.Tensor"]]]
"""`stream(meta, components)` yields `(component.key, tensor)` in diffusers naming for the listed components."""


@dataclass
class PipelineParts:
    """What a diffusers folder holds besides weights: configs, classes, tokenizers, pipeline settings."""

    configs: dict[str, dict[str, Any]]
    """Component (and "scheduler") -> config, as `DiffusionModel.component_configs` gives them."""
    classes: dict[str, tuple[str, str]]
    """Component -> (library, class name)."""
    tokenizers: dict[str, Any]
    pipeline_config: dict[str, Any]
    embedding_tokens: dict[str, frozenset[int]] = field(default_factory=dict)
    """Tokenizer -> the ids of the tokens the model's embeddings added to it. A saved folder leaves them out:
    the vectors are saved as their own files, not as table rows, so in the folder those ids would name rows
    that never trained (or none at all), and the embedding could not be added to it again."""


@dataclass
class Adapters:
    """What training or the user added on top of the base weights."""

    lora: LoraAdapter | None = None
    embeddings: list[EmbeddingAdapter] = field(default_factory=list)


@dataclass
class DiffusionModel:
    spec: FamilySpec
    components: dict[str, Any]
    """Modules by component name: the denoiser, the text encoders and the VAE."""
    tokenizers: dict[str, Any]
    """Tokenizers by name (`tokenizer`, `tokenizer_2`), each feeding the text encoder that names it."""
    noise_scheduler: Any
    """The training schedule (a diffusers scheduler): DDPM's betas, or flow matching's shift."""
    source: str
    prediction_type: str | None = None
    """DDPM families: epsilon, v_prediction or sample. Flow-matching families: None."""
    scheduler_class: str = ""
    """The scheduler class the source model shipped with, so a saved diffusers folder samples the same way."""
    pipeline_config: dict[str, Any] = field(default_factory=dict)
    """Pipeline-level settings of `model_index.json` other than components (e.g. `force_zeros_for_empty_prompt`)."""
    adapters: Adapters = field(default_factory=Adapters)
    options: dict[str, Any] = field(default_factory=dict)
    """The family's `model.options` this model was loaded with (validated by `spec.options`), for the family's
    hooks and sampler (a text encoder's token limit, a guidance input); empty means the family's defaults."""

    def __post_init__(self) -> None:
        self._pool_at_the_end_token()

    def _pool_at_the_end_token(self) -> None:
        """Released CLIP configs carry an old `eos_token_id` of 2, with which transformers pools at the largest
        token id: a trained embedding's placeholder (ids past the vocabulary) rather than the end token, so
        pooled vectors would change wherever a caption names one. Each text model takes its tokenizer's end
        token instead, as sd-scripts and ComfyUI pool; its config, and so every saved file, stays as released.
        """
        for component in self.spec.text_encoders:
            module = self.components.get(component.name)
            text_model = getattr(module, "text_model", module)  # a model with a projection wraps its text model
            tokenizer = self.tokenizers.get(component.tokenizer) if component.tokenizer else None
            end = getattr(tokenizer, "eos_token_id", None)
            if text_model is not None and hasattr(text_model, "eos_token_id") and end is not None:
                text_model.eos_token_id = end

    @classmethod
    def from_pipeline(
        cls, pipe: Any, spec: FamilySpec, *, source: str, prediction_type: str | None = None, **replace: Any
    ) -> DiffusionModel:
        """Wrap a diffusers pipeline's components; `replace` swaps one (e.g. a bigger `unet`).

        Benchmarks and tools that build models in memory go through here, so they get the same object
        the loader returns without knowing its fields. The pipeline's scheduler is kept as it is.
        """
        components = {c.name: getattr(pipe, c.name) for c in spec.components if getattr(pipe, c.name, None) is not None}
        components.update({name: module for name, module in replace.items() if name in spec.component_names})
        tokenizers = {c.tokenizer: getattr(pipe, c.tokenizer) for c in spec.text_encoders if c.tokenizer}
        prediction = prediction_type or getattr(pipe.scheduler.config, "prediction_type", None)
        return cls(
            spec=spec,
            components=components,
            tokenizers=tokenizers,
            noise_scheduler=pipe.scheduler,
            source=source,
            prediction_type=prediction,
            scheduler_class=type(pipe.scheduler).__name__,
        )

    def __getattr__(self, name: str) -> Any:
        """Components and tokenizers by name, for readable family code (`model.unet`, `model.tokenizer_2`)."""
        if not name.startswith("__"):
            for table in ("components", "tokenizers"):
                values = self.__dict__.get(table) or {}
                if name in values:
                    return values[name]
        raise AttributeError(f"{type(self).__name__} of {self.__dict__.get('spec')} has no {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """`model.vae = other` replaces the component (or tokenizer) itself, so savers and samplers see it."""
        for table in ("components", "tokenizers"):
            values = self.__dict__.get(table)
            if values is not None and name in values:
                values[name] = value
                return
        super().__setattr__(name, value)

    @property
    def model_type(self) -> str:
        return self.spec.name

    @property
    def denoiser(self) -> Any:
        return self.components[self.spec.denoiser.name]

    @property
    def largest_side(self) -> int | None:
        """The largest image side in pixels the denoiser takes (`FamilySpec.largest_side`); None: any."""
        reach = self.spec.largest_side
        return None if reach is None else reach(self.denoiser.config)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def denoiser_dtype(self) -> torch.dtype:
        """The dtype denoiser inputs take: its first floating-point weight's (the frozen base's, under LoRA;
        a 4-bit quantised weight is stored as bytes and says nothing about it).

        diffusers' own `.dtype` walks every submodule looking for casting hooks, which costs
        milliseconds per call: too much for a per-step cast in training and sampling.
        """
        dtype: torch.dtype = next(param.dtype for param in self.denoiser.parameters() if param.is_floating_point())
        return dtype

    def text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders this model has (an optional one may be absent)."""
        return tuple(c.name for c in self.spec.text_encoders if c.name in self.components)

    def tokenizer_for(self, encoder: str) -> Any:
        tokenizer = self.spec.component(encoder).tokenizer
        if tokenizer is None:
            raise KeyError(encoder)
        return self.tokenizers[tokenizer]

    def modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        for component in self.spec.components:
            module = self.components.get(component.name)
            if module is not None:
                yield component.name, module

    def component_configs(self) -> dict[str, dict[str, Any]]:
        """Each component's config as a diffusers folder holds it (scheduler with its class name)."""
        configs: dict[str, dict[str, Any]] = {}
        for name, module in self.modules():
            config: Any = module.config  # diffusers' FrozenDict or transformers' PretrainedConfig
            configs[name] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        class_name = self.scheduler_class or type(self.noise_scheduler).__name__
        configs["scheduler"] = {**self.noise_scheduler.config, "_class_name": class_name}
        return configs

    def weights_stream(self) -> WeightsStream:
        """The base weights as `(component.key, tensor)` pairs, references not copies.

        `stream(meta, components)` can be replayed; with `meta` it yields data-less stand-ins, which
        is how writers plan a file header before writing. An optional component the model goes without
        yields nothing. Injected LoRA layers are not base weights:
        a model carrying them has no plain stream, so this refuses (save the LoRA, or merge it first).
        """
        names = tuple(name for name, _ in self.modules())
        state_dicts = {name: module.state_dict() for name, module in self.modules()}
        if any(".base_layer." in key for sd in state_dicts.values() for key in sd):
            raise UserError(
                "the model has LoRA layers injected, so its weights are not a plain base model",
                hint="Save the LoRA itself (kohya or peft format), or merge it into the weights first.",
            )

        def stream(meta: bool, wanted: tuple[str, ...] = names) -> Iterator[tuple[str, torch.Tensor]]:
            for name in wanted:
                for key, tensor in state_dicts.get(name, {}).items():
                    yield f"{name}.{key}", tensor.to("meta") if meta else tensor

        return stream

    def pipeline_parts(self) -> PipelineParts:
        """What a diffusers folder of this model holds besides its weights."""
        classes = {
            name: (type(module).__module__.split(".")[0], type(module).__name__) for name, module in self.modules()
        }
        return PipelineParts(
            self.component_configs(),
            classes,
            dict(self.tokenizers),
            dict(self.pipeline_config),
            self._embedding_tokens(),
        )

    def _embedding_tokens(self) -> dict[str, frozenset[int]]:
        """Tokenizer -> the ids of the tokens the model's embeddings added to it."""
        tokenizers = {c.name: c.tokenizer for c in self.spec.text_encoders if c.tokenizer is not None}
        added: dict[str, frozenset[int]] = {}
        for embedding in self.adapters.embeddings:
            for encoder, ids in embedding.token_ids.items():
                tokenizer = tokenizers[encoder]
                added[tokenizer] = added.get(tokenizer, frozenset()) | frozenset(ids)
        return added
