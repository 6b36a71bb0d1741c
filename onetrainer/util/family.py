"""Model families as data: one spec per family, the single source of its facts.

A family's own module builds its `FamilySpec` and registers it (`register_family`); every shared
module asks the spec instead of keeping a table of family names. The spec says what the family is
made of (components and their roles), how its latents look, which bucket step and resolution it
trains at, which methods it supports, how other tools name it (ModelSpec architecture, kohya base
model version), and how to recognise its files. Behaviour that differs per family (key layouts, the
tiny builder, options) is held as small objects whose types are declared here, so nothing in `util`
imports a family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.util.errors import UserError
from onetrainer.util.suggest import did_you_mean

if TYPE_CHECKING:
    import torch

    from onetrainer.util.config.base import Section
    from onetrainer.util.keymaps.engine import StreamConverter
    from onetrainer.util.keymaps.fused_lora import FusedAdapter

Shapes = Mapping[str, tuple[int, ...]]
"""A weights file's header: key -> shape."""


class Role(str, Enum):
    """What a component does; shared code treats components by role, never by name."""

    DENOISER = "denoiser"
    TEXT_ENCODER = "text_encoder"
    VAE = "vae"


class Objective(str, Enum):
    """The training objective a family's denoiser was made for."""

    DDPM = "ddpm"
    """Discrete-time diffusion: the denoiser predicts epsilon, v or the sample at an integer timestep."""
    FLOW_MATCHING = "flow-matching"
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise; the denoiser predicts noise - x0."""


ZERO_TERMINAL_SNR_SCHEDULE: Mapping[str, Any] = MappingProxyType(
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
)
"""diffusers' scheduler settings of a DDPM model trained to zero terminal SNR (its last timestep pure noise):
a model loaded or saved with them samples and trains on the schedule it was made for."""


def is_zero_terminal_snr(scheduler_config: Mapping[str, Any]) -> bool:
    return bool(scheduler_config.get("rescale_betas_zero_snr"))


@dataclass(frozen=True)
class Component:
    """One part of a model, named as the family's diffusers pipeline names it."""

    name: str
    role: Role
    title: str
    """How users know it: "UNet", "CLIP ViT-L text encoder"."""
    tokenizer: str | None = None
    """Text encoders: the name of the tokenizer that feeds it (`tokenizer`, `tokenizer_2`)."""
    trains_by_default: bool = False
    kohya_prefix: str | None = None
    """Prefix of this component's modules in kohya / LyCORIS LoRA files (`lora_unet_`, `lora_te1_`)."""
    embedding_key: str | None = None
    """Key of this text encoder's vectors in A1111 embedding files; None if embeddings cannot use it."""
    embedding_aliases: tuple[str, ...] = ()
    """Other keys other trainers store this encoder's vectors under (OneTrainer's `t5` for T5-XXL): read,
    never written."""
    optional: bool = False
    """The pipeline runs without it (SD 3's T5)."""
    takes_layer_skip: bool = True
    """Text encoders: the conditioning reads one of its hidden layers, which `layer_skip` (A1111's clip skip)
    moves back; False where the model reads only its last layer or its pooled output (T5, a pooled-only CLIP)."""
    pad_token: str | None = None
    """Text encoders trained with another pad token than their tokenizer's end-of-text (OpenCLIP's "!"): a
    tokenizer found outside the model's own tokenizer folder is given it, since padding positions are
    part of the conditioning."""
    lora_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """LoRA target presets (`attn`, `attn-mlp`, `full`): regexes searched in "." + module path; each preset
    adds its patterns to those of the presets before it."""
    blocks: tuple[str, ...] = ()
    """Denoisers: regexes searched in "." + module path that find its blocks, the units gradient checkpointing
    recomputes and layer offloading moves (`model.blocks`); empty: the entries of its top-level ModuleLists."""

    lora_kohya_only: str | None = None
    """The tools that read this component's LoRA whole only in the kohya layout ("ComfyUI" for SD 3's T5, whose
    peft keys neither diffusers' loader nor ComfyUI maps, and for a UNet, whose attention layers ComfyUI maps
    from diffusers' old `processor.to_q` names only); None where peft keys load too. A LoRA that
    trains such a component is saved as kohya under `saving.format: auto`, and an explicit peft is warned about
    (onetrainer reads both layouts, so it is not refused)."""

    lora_all_or_none: tuple[str, ...] = ()
    """Sibling layers (by their last path parts) A1111 adapts only all together: its OpenCLIP text encoders run
    each attention as one fused layer, whose LoRA applies there only when q, k, v and out all carry one; a
    kohya LoRA on some of them loads without error and changes nothing there (Forge, ComfyUI and diffusers
    keep the layers apart and apply it)."""

    input_layer: str | None = None
    """Denoisers: the weight that takes the noised latents (`conv_in.weight`); a linear one takes them packed in
    patches of `FamilySpec.patch_size`² latent pixels. Its width tells a text-to-image denoiser from one that takes
    images besides (an inpainting or instruct-pix2pix model), which this trainer cannot feed."""

    unused_layers: Callable[[Any], Iterable[str]] | None = None
    """Given the component's module: the paths of layers whose output the model discards (SD 3's last block
    computes a text-stream query it never reads). Their gradients are always zero, so nothing trains there:
    LoRA presets leave them out and a full fine-tune keeps them frozen."""

    @property
    def trainable(self) -> bool:
        return self.role is not Role.VAE

    def unused_in(self, module: Any) -> frozenset[str]:
        """`unused_layers` of this component's `module` (none for most components)."""
        return frozenset(self.unused_layers(module)) if self.unused_layers is not None else frozenset()


@dataclass(frozen=True)
class OneTrainerLayerPreset:
    """One of OneTrainer's named LoRA layer-filter presets (`layer_filter_preset`) for a family's model types."""

    layer_filter: str
    """What it stands for: OneTrainer's `layer_filter` text, comma-separated substrings of the paths of the
    denoiser's linear and convolution layers to adapt (its UI writes it when the preset is chosen)."""
    same_as: str | None = None
    """Our LoRA target preset (`lora_targets`) that adapts the same layers of the denoiser (of those whose output
    counts), where one does; a test checks it on the family's tiny model."""


@dataclass(frozen=True)
class Evidence:
    """Why a file was recognised as a family; `family` None means "one of these, cannot tell which"."""

    family: str | None
    reason: str
    prediction_type: str | None = None
    candidates: tuple[str, ...] = ()


ConfigRecogniser = Callable[[Mapping[str, Mapping[str, Any]]], "Evidence | None"]
"""Component configs of a diffusers folder or hub repo (`{"unet": {...}}`) -> evidence."""
ShapesRecogniser = Callable[[Shapes], "Evidence | None"]
"""A file's key -> shape header -> evidence."""


def _never(_: Any) -> Evidence | None:
    return None


@dataclass(frozen=True)
class Recognisers:
    """How to tell a family's files from their headers and configs alone; each returns None when the
    file is not the family's (or says nothing either way)."""

    single_file: ShapesRecogniser = _never
    """An original single-file checkpoint."""
    configs: ConfigRecogniser = _never
    """A diffusers folder or hub repo whose `model_index.json` names one of the family's pipelines."""
    lora: ShapesRecogniser = _never
    """A LoRA file (kohya or peft keys)."""
    embedding: ShapesRecogniser = _never
    """An embedding file (A1111 or diffusers keys)."""


class LoraNaming(Protocol):
    """How a family's modules are named in kohya-style LoRA files (from and to diffusers paths)."""

    @property
    def implementation(self) -> str:
        """`modelspec.implementation` of such a LoRA: "diffusers" for diffusers module names."""
        ...

    def to_kohya(self, module: str) -> str:
        """`unet.down_blocks.0.attentions.0.proj_in` -> `lora_unet_..._proj_in`."""
        ...

    def from_kohya(self, name: str) -> str:
        """The inverse: a kohya module name -> `component.module.path`."""
        ...

    def for_model(self, configs: Mapping[str, Mapping[str, Any]]) -> LoraNaming:
        """The naming of a model with these component configs (`{"unet": {...}}`): names built from the
        original checkpoint's block indices depend on the architecture's block counts; others return
        themselves. Without a model (converting a file alone) the family's own naming is used."""
        ...

    def join(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Neutral-form adapters (component-prefixed peft tensors, alpha per module) regrouped into the
        modules `to_kohya` names: unchanged where each diffusers module has a kohya name of its own; where
        the original model fuses several (q, k, v in one layer), their adapters merged into one."""
        ...

    def split(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The inverse of `join`, for adapters named by `from_kohya`."""
        ...

    def whole_fused(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
        """For sampling, before `split`: the adapters on fused original layers that `split` cannot give per-part
        factors (a LoKr, a DoRA) taken out whole, to be merged into the parts' weights joined; namings
        without fused layers take out nothing."""
        ...


class SingleFileFormat(Protocol):
    """A family's original single-file checkpoint layout (what ComfyUI and A1111 load), both ways."""

    @property
    def component_prefixes(self) -> tuple[tuple[str, str], ...]:
        """(key prefix in the file, diffusers component), e.g. ("first_stage_model.", "vae")."""
        ...

    def writer(self, diffusers_keys: Iterable[str]) -> StreamConverter:
        """diffusers -> single file, for a model with these component-prefixed keys, tensor by tensor."""
        ...

    def reader(self, keys: Iterable[str], *, text_encoder_layers: Mapping[str, int] | None = None) -> StreamConverter:
        """single file -> component-prefixed diffusers keys, for a file with these keys.

        `text_encoder_layers` (text encoder -> its diffusers layer count) drops layers a file holds past
        them (SD 2.x files keep an OpenCLIP layer its pipeline never runs).
        """
        ...

    def markers(self, prediction_type: str | None, *, zero_terminal_snr: bool = False) -> dict[str, torch.Tensor]:
        """Extra tensors a file of this prediction type and schedule carries (ComfyUI reads them)."""
        ...

    def schedule(self, keys: Iterable[str]) -> dict[str, Any]:
        """Scheduler config entries a file with these keys states through its markers, besides its
        prediction type (which detection reads)."""
        ...


@dataclass(frozen=True)
class TinyModel:
    """A tiny random-weight model of the family with the real module structure, for tests and demos."""

    build: Callable[[int], Any]
    """seed -> a diffusers pipeline."""
    description: str
    diffusers_cannot_read: Mapping[str, str] = field(default_factory=dict)
    """Save layouts (`kohya`, `single-file`) that diffusers' converters cannot read at this model's widths, or
    at all, with why (a converter that hard-codes the released model's width, a loader without that layout):
    the conformance suite skips loading those in diffusers, and the family's own tests check what they can
    (the layout at the released width, or in the tools that read it)."""


@dataclass(frozen=True)
class Variant:
    """What differs for one prediction type of a family (SD 2.x's 768 px v-prediction models)."""

    modelspec_architecture: str | None = None
    default_resolution: int | None = None
    shipped_config: str | None = None
    """The folder under `onetrainer/model/configs` with this variant's architecture."""


@dataclass(frozen=True)
class FamilySpec:
    name: str
    """The model type users write (`model.type`, `--model-type`)."""
    title: str
    """How users know it: "SD 1.x", "SD 2.x"."""
    components: tuple[Component, ...]
    objective: Objective
    latent_channels: int
    bucket_step: int
    """Bucket sides are multiples of this many pixels (the VAE factor, times the patch size for DiTs)."""
    patch_size: int
    """Latent pixels per denoiser token along each side (1 for UNets, 2 for most DiTs)."""
    default_resolution: int
    methods: frozenset[str]
    """Training methods this family supports: "lora", "full", "embedding"."""
    modelspec_architecture: str
    """`modelspec.architecture` of a full model (adapters append `/lora`, `/textual-inversion`)."""
    kohya_base_model_version: str
    """`ss_base_model_version` as sd-scripts writes it."""
    pipeline_classes: tuple[str, ...]
    """diffusers `model_index.json` `_class_name`s of this family's folders."""
    recognise: Recognisers
    kohya_v_suffix: bool = False
    """sd-scripts appends "_v" to the base model version of a v-prediction model of this family."""
    kohya_v2: bool = False
    """sd-scripts' `ss_v2` flag."""
    modelspec_aliases: tuple[str, ...] = ()
    """Other `modelspec.architecture` values (before any `/lora`) other trainers write for this family, which
    detection trusts as it trusts its own. One that several families list names them all as candidates
    (OneTrainer writes one value for SD 3.5 Large and Medium), ruling every other family out."""
    latent_scale: int = 8
    """Pixels per latent along each side (the VAE's downscale)."""
    lora_naming: LoraNaming | None = None
    single_file: SingleFileFormat | None = None
    tiny: Mapping[str, TinyModel] = field(default_factory=dict)
    """`tiny:<key>` models; the key is the family name, or the family name plus a variant suffix."""
    hub_ids: tuple[str, ...] = ()
    """Hub repositories known to hold this family (tokenizer fallbacks for single files, detection)."""
    options: type[Section] | None = None
    """The schema of `model.options` for this family (None: the family has no options)."""
    variants: Mapping[str, Variant] = field(default_factory=dict)
    """Prediction type -> what differs for models of that prediction type."""
    shipped_config: str | None = None
    """The folder under `onetrainer/model/configs` with the family's architecture, for single files."""
    is_default: bool = False
    """This is the model type of a run config that names none (exactly one registered family says so)."""
    onetrainer_model_types: tuple[str, ...] = ()
    """OneTrainer's `model_type` names this family trains (`onetrainer import` maps them here); the first is
    the one `onetrainer export` writes. Types that need inputs the family lacks (inpainting) are left out.
    Several families may name the same type (OneTrainer trains a distilled sibling as the base type, two sizes
    of a model as one type): the importer then tells them apart by the base model."""
    onetrainer_options: Mapping[str, str] = field(default_factory=dict)
    """OneTrainer setting (a top-level key, or `<part>.<key>`) -> the `model.options` key it is, both ways:
    `{"transformer.guidance_scale": "guidance"}`."""
    onetrainer_layer_presets: Mapping[str, OneTrainerLayerPreset] = field(default_factory=dict)
    """OneTrainer's layer-filter presets for its model types of this family, by name, besides `full` (every layer)
    and `custom`: `onetrainer import` reads one whose `layer_filter` is empty as OneTrainer's UI fills it in, and
    `onetrainer export` names the one that is the same as our preset."""
    onetrainer_fixed_options: Mapping[str, Any] = field(default_factory=dict)
    """`model.options` OneTrainer holds fixed, with no setting of its own: `onetrainer import` sets them, and
    `onetrainer export` lists another value as lacking (`{"t5_max_length": 77}`)."""
    onetrainer_bucket_step: int | None = None
    """The pixel step of OneTrainer's aspect buckets for this family where it differs from `bucket_step`: the
    importer notes that images are cropped a little differently."""
    onetrainer_sample_defaults: Mapping[str, Any] = field(default_factory=dict)
    """OneTrainer's sample settings for its model types of this family, over its generic ones (512 px, 30 steps,
    guidance 7, DDIM): `{"width": 1024, "cfg_scale": 7.5, ...}`. They fill what a sample of a sample file leaves
    out (OneTrainer reads an inline sample list over the generic ones)."""
    default_lora_format: str = "kohya"
    """The layout a LoRA saved with `saving.format: auto` takes: kohya, or peft for a family whose kohya names
    diffusers cannot read (SD 3: diffusers' loader reads diffusers keys only, which ComfyUI maps too). A LoRA
    that trains a component with `lora_kohya_only` is saved as kohya all the same."""
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    """The family's own defaults for shared run-config keys, nested as in the YAML (SD 3 trains with
    logit-normal timesteps: `{"noise": {"timesteps": {"distribution": "logit-normal"}}}`); they sit under
    the preset, the file and the overrides, which may still set anything the family takes."""
    largest_side: Callable[[Mapping[str, Any]], int] | None = None
    """The denoiser's config -> the largest image side in pixels it takes, for a denoiser whose positional
    embedding is a fixed table (SD 3's MMDiT); None where any size works."""
    leaves_out: Callable[[Any], Mapping[str, str]] | None = None
    """The family's validated `model.options` -> each optional component they leave out, with the option that
    does (SD 3's `t5: false` leaves T5 out). A left-out component is read from no source, trains in no run
    and counts in no memory estimate."""

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    def by_role(self, role: Role) -> tuple[Component, ...]:
        return tuple(component for component in self.components if component.role is role)

    @property
    def denoiser(self) -> Component:
        return self.by_role(Role.DENOISER)[0]

    @property
    def text_encoders(self) -> tuple[Component, ...]:
        return self.by_role(Role.TEXT_ENCODER)

    def left_out(self, options: Mapping[str, Any]) -> Mapping[str, str]:
        """Component -> the `model.options` key leaving it out, for these options (valid ones: the config's
        validation refuses the rest first)."""
        if self.leaves_out is None or self.options is None:
            return {}
        return self.leaves_out(self.options.model_validate(dict(options)))

    @property
    def vae(self) -> Component:
        return self.by_role(Role.VAE)[0]

    def input_channels(self, shape: tuple[int, ...]) -> int:
        """The latent channels a denoiser takes whose `input_layer` weight has this shape (a convolution's input
        width; a linear layer's, over the latent pixels of a patch)."""
        return shape[1] if len(shape) == 4 else shape[1] // self.patch_size**2

    @property
    def size_step(self) -> int:
        """Image sides the denoiser accepts are multiples of this (bucket sides may be coarser)."""
        return self.latent_scale * self.patch_size

    @property
    def auto_lora_format(self) -> str:
        """What `auto` means for this family's LoRAs: its default, or peft for a family without kohya names.
        A LoRA on a component other tools read only as kohya may differ: see `auto_lora_format_for`."""
        return self.default_lora_format if self.lora_naming is not None else "peft"

    def auto_lora_format_for(self, trained: Iterable[str]) -> str:
        """What `auto` means for a LoRA on the components `trained`: kohya where one of them loads elsewhere only
        in that layout (a peft file would silently lose it there), else `auto_lora_format`."""
        return "kohya" if self.lora_naming is not None and self.kohya_only(trained) else self.auto_lora_format

    def kohya_only(self, trained: Iterable[str]) -> tuple[Component, ...]:
        """The components among `trained` whose LoRA other tools read only in the kohya layout."""
        names = set(trained)
        return tuple(c for c in self.components if c.name in names and c.lora_kohya_only is not None)

    def peft_warnings(self, trained: Iterable[str], setting: str) -> list[str]:
        """What a peft LoRA on the components `trained` loses elsewhere, for `setting` (the key or option and
        value that asked for peft: `saving.format: peft`); empty when every part loads."""
        return [
            f"{setting}: the {component.title}'s LoRA is written under peft keys ({component.name}.*), of which "
            f"{component.lora_kohya_only} loads only some or none; kohya is the layout in which it loads in "
            f"{component.lora_kohya_only}"
            for component in self.kohya_only(trained)
        ]

    def all_or_none_warnings(self, modules: Iterable[str], setting: str) -> list[str]:
        """What a kohya LoRA adapting `modules` (component-prefixed layer paths) loses in A1111: the
        groups of a component's `lora_all_or_none` layers it adapts only in part, for `setting` (what chose
        the layers); empty when every group is whole or untouched."""
        wanted = {c.name: c.lora_all_or_none for c in self.components if c.lora_all_or_none}
        groups: dict[tuple[str, str], set[str]] = {}
        for path in modules:
            name, _, rest = path.partition(".")
            for suffix in wanted.get(name, ()):
                if rest.endswith("." + suffix):
                    groups.setdefault((name, rest[: -len(suffix) - 1]), set()).add(suffix)
        partial: dict[str, list[str]] = {}
        for (name, parent), found in groups.items():
            if len(found) < len(wanted[name]):
                adapted = ", ".join(suffix for suffix in wanted[name] if suffix in found)
                partial.setdefault(name, []).append(f"{parent}: {adapted}")
        return [
            f"{setting}: {len(parents)} attention layers of the {self.component(name).title} adapt only some of "
            f"{', '.join(wanted[name])} (e.g. {parents[0]}); A1111 applies such a layer's LoRA only when all of "
            "them are adapted, so there it loads without error and changes nothing (Forge, ComfyUI and diffusers "
            "apply it). Adapt all of them, as the attn presets do"
            for name, parents in partial.items()
        ]

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(component.name for component in self.components)

    def modelspec_for(self, prediction_type: str | None) -> str:
        variant = self.variants.get(prediction_type or "")
        return (variant.modelspec_architecture if variant else None) or self.modelspec_architecture

    def shipped_config_for(self, prediction_type: str | None) -> str | None:
        variant = self.variants.get(prediction_type or "")
        return (variant.shipped_config if variant else None) or self.shipped_config

    def resolution_for(self, prediction_type: str | None) -> int:
        variant = self.variants.get(prediction_type or "")
        return (variant.default_resolution if variant else None) or self.default_resolution


_families: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Make `spec` a model type. Called by the family's own module at import."""
    existing = _families.get(spec.name)
    if existing is not None and existing is not spec:
        raise RuntimeError(f"model family {spec.name} registered twice")
    default = next((other.name for other in _families.values() if other.is_default and other is not spec), None)
    if spec.is_default and default is not None:
        raise RuntimeError(f"model families {default} and {spec.name} both claim to be the default model type")
    roles = [component.role for component in spec.components]
    if roles.count(Role.DENOISER) != 1 or roles.count(Role.VAE) != 1:
        raise RuntimeError(f"model family {spec.name} needs exactly one denoiser and one VAE")
    _families[spec.name] = spec
    return spec


def families() -> list[FamilySpec]:
    """Every registered family, sorted by name."""
    from onetrainer.util.registry import discover

    discover()
    return [_families[name] for name in sorted(_families)]


def family_names() -> list[str]:
    return [spec.name for spec in families()]


def find_family(name: str) -> FamilySpec | None:
    from onetrainer.util.registry import discover

    discover()
    return _families.get(name)


def get_family(name: str) -> FamilySpec:
    """The spec of model type `name`, or a user error that lists the model types and suggests one."""
    spec = find_family(name)
    if spec is None:
        names = family_names()
        raise UserError(
            f"unknown model type {name!r}; {did_you_mean(name, names)}",
            hint=f"Model types: {', '.join(names)}.",
        )
    return spec


def default_family() -> FamilySpec:
    """The model type of a run config that names none: the registered family that says it is the default."""
    for spec in families():
        if spec.is_default:
            return spec
    raise RuntimeError("no registered model family is the default model type")


def family_title(name: str | None) -> str:
    """A family's title for messages; unknown names are shown as given."""
    spec = find_family(name) if name else None
    return spec.title if spec is not None else (name or "an unknown model family")


def tiny_model(key: str) -> tuple[FamilySpec, TinyModel]:
    """The family and builder of `tiny:<key>`, or a user error listing the tiny models."""
    for spec in families():
        if key in spec.tiny:
            return spec, spec.tiny[key]
    names = tiny_names()
    raise UserError(f"unknown tiny model {key!r}; {did_you_mean(key, names)}", hint=f"Tiny models: {', '.join(names)}.")


def tiny_names() -> list[str]:
    return sorted(key for spec in families() for key in spec.tiny)


def by_modelspec_architecture(architecture: str) -> tuple[FamilySpec, str | None] | None:
    """The family a `modelspec.architecture` value names, and the prediction type its variant implies; None
    for a value no family writes, or an alias several families share (see `modelspec_candidates`)."""
    base = architecture.split("/")[0]
    for spec in families():
        for prediction, variant in spec.variants.items():
            if base == variant.modelspec_architecture:
                return spec, prediction
        if base == spec.modelspec_architecture:
            return spec, None
    named = modelspec_candidates(architecture)
    return (get_family(named[0]), None) if len(named) == 1 else None


def modelspec_candidates(architecture: str) -> tuple[str, ...]:
    """The families a `modelspec.architecture` value may name by their aliases (`modelspec_aliases`)."""
    base = architecture.split("/")[0]
    return tuple(spec.name for spec in families() if base in spec.modelspec_aliases)


def kohya_base_model_candidates(version: str) -> tuple[FamilySpec, ...]:
    """The families an `ss_base_model_version` value names: sd-scripts writes one value for models of one
    architecture (a distilled model and its base), so it may name several."""
    return tuple(spec for spec in families() if version == spec.kohya_base_model_version)


def by_pipeline_class(class_name: str) -> list[FamilySpec]:
    return [spec for spec in families() if class_name in spec.pipeline_classes]


def recognise(kind: str, value: Any, specs: Iterable[FamilySpec] | None = None) -> Evidence | None:
    """The families' verdicts on one header or set of configs (`kind`: a `Recognisers` field), merged.

    One family recognised: that family. Several (an ambiguous file): no family, the candidates named.
    None: no family knows it. Where no family is sure, the candidates of every family that claims the
    value are named (two families' LoRAs may share diffusers' module names).
    """
    found: dict[str | None, Evidence] = {}
    undetermined: list[Evidence] = []
    for spec in families() if specs is None else specs:
        evidence = getattr(spec.recognise, kind)(value)
        if evidence is not None:
            found.setdefault(evidence.family, evidence)
            if evidence.family is None:
                undetermined.append(evidence)
    known = [evidence for family, evidence in found.items() if family is not None]
    if len(known) == 1:
        return known[0]
    if len(known) > 1:
        names = tuple(sorted(str(evidence.family) for evidence in known))
        return Evidence(None, f"matches {' and '.join(names)}", candidates=names)
    if len(undetermined) > 1:
        names = tuple(dict.fromkeys(name for evidence in undetermined for name in evidence.candidates))
        reasons = dict.fromkeys(evidence.reason for evidence in undetermined)
        return Evidence(None, " or ".join(reasons), candidates=names)
    return found.get(None)
