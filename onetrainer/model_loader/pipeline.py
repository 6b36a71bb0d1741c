"""Load any family's base model: a diffusers folder, a hub id, a tiny model, or (through the family) a single file.

A diffusers pipeline says in its `model_index.json` which class each component is; the loader
builds exactly the family's components from it with diffusers' and transformers' own
`from_pretrained` (so the HF cache and `HF_HUB_OFFLINE` behave as users expect), loads each text
encoder's tokenizer and checks that it fits its encoder, and turns the scheduler config into the
family's training schedule (DDPM or flow matching). Original single files differ per family, so each
family brings its own reader. The family of the source is detected and checked against the one asked
for, so a file of another family is refused with what it is.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model.quantised import QuantisedStorage, module_storage, quantise_module
from onetrainer.model_loader.architecture import pipeline_settings
from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.model_loader.streaming import load_quantised
from onetrainer.model_loader.tokenizers import tokenizer_mismatch
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.detect import LORA, MODEL, Detection, detect_path, detect_pipeline, pipeline_config_files
from onetrainer.util.dtypes import torch_dtype
from onetrainer.util.enums import PredictionType
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Objective, family_names, family_title, get_family, tiny_model
from onetrainer.util.registry import ModuleKind, lookup

if TYPE_CHECKING:
    import torch

SCHEDULER_CONFIG = "scheduler_config.json"
LIBRARIES = ("diffusers", "transformers")
"""The only libraries a `model_index.json` may name classes from (anything else is refused, not imported)."""


@dataclass
class LoadedParts:
    """A family's components as read from a source, before the training schedule is built."""

    components: dict[str, Any]
    tokenizers: dict[str, Any]
    scheduler: dict[str, Any]
    """The scheduler config, with `_class_name`."""
    prediction_type: str | None
    pipeline_config: dict[str, Any] = field(default_factory=dict)


SingleFileReader = Callable[..., LoadedParts]
"""`read(path, detection, spec, *, prediction_type, config, tokenizer, dtype, leave_out, quantise, vae) -> LoadedParts`;
`vae` (`model.vae`) stands in for the file's VAE, which is then not read (nor required)."""


class DiffusersLoader:
    """A `ModelLoader` for any family; `read_single_file` is the family's reader of its original files.

    Optional components the model's options leave out (`FamilySpec.leaves_out`) are not read from any
    source, and the model runs without them as its pipeline does.
    """

    def __init__(self, read_single_file: SingleFileReader | None = None) -> None:
        self.read_single_file = read_single_file

    def load(
        self,
        model_config: ModelConfig,
        *,
        device: str = "cpu",
        quantise: Mapping[str, QuantisedStorage] | None = None,
    ) -> DiffusionModel:
        """The base model; components named in `quantise` come with their linear layers quantised as they are
        read from diffusers folders, hub repos (`streaming`) and single files, and quantised layer by layer
        after loading otherwise (a pickled file, or weights in another layout)."""
        quantise = dict(quantise or {})
        if model_config.base is None:
            raise UserError(
                "model.base is not set",
                where="model.base",
                hint="Name a diffusers folder, a checkpoint file or a hub id.",
            )
        spec = get_family(model_config.type)
        source = str(model_config.base)
        wanted = PredictionType(model_config.prediction_type)
        dtype = torch_dtype(model_config.dtype)
        kind = source_kind(source, where="model.base")
        left_out = frozenset(spec.left_out(model_config.options))
        kept = tuple(name for name in spec.component_names if name not in left_out)
        vae_source = None if model_config.vae is None else str(model_config.vae)
        if kind == TINY:
            parts = _left_out(_from_tiny(source, spec), spec, left_out)
        elif kind == HUB:
            check_family(hub_detection(source), spec)
            parts = from_pretrained(source, source, spec, dtype, hub=True, only=kept, quantise=quantise)
        else:
            path = Path(source).expanduser()
            detection = detect_path(path)
            check_family(detection, spec)
            if path.is_dir():
                parts = from_pretrained(str(path), source, spec, dtype, hub=False, only=kept, quantise=quantise)
            elif self.read_single_file is None:
                raise UserError(f"{spec.title} models cannot be loaded from a single file yet", where="model.base")
            else:
                parts = self.read_single_file(
                    path,
                    detection,
                    spec,
                    prediction_type=wanted,
                    config=model_config.config,
                    tokenizer=model_config.tokenizer,
                    dtype=dtype,
                    leave_out=left_out,
                    quantise=quantise,
                    vae=vae_source,
                )
                vae_source = None  # the reader loaded it in place of the file's
        if vae_source is not None:
            from onetrainer.model_loader.vae import load_vae

            vae = spec.vae.name
            parts.components[vae] = load_vae(vae_source, dict(parts.components[vae].config), dtype)
        for name, storage in quantise.items():
            module = parts.components.get(name)
            if module is not None and module_storage(module) is None:
                quantise_module(module, storage.format, storage.compute_dtype, quantise_on=storage.quantise_on)
        prediction = parts.prediction_type if wanted is PredictionType.AUTO else wanted.value
        model = assemble(spec, parts, source, prediction, device, dtype)
        model.options = dict(model_config.options)
        return model


def load_model(
    source: str | Path,
    *,
    model_type: str | None = None,
    device: str = "cpu",
    **model_config: Any,
) -> DiffusionModel:
    """Load `source` with its family's registered loader; `model_type=None` detects the family."""
    source = str(source)
    name = model_type or detect_model_type(source)
    config = ModelConfig(type=name, base=source, **model_config)
    loader = lookup(ModuleKind.LOADER, name)()
    loaded: DiffusionModel = loader.load(config, device=device)
    return loaded


def detect_model_type(source: str) -> str:
    """The family of a base model, from `tiny:<name>`, a local path, or a hub repo's configs."""
    kind = source_kind(source, where="model.base")
    if kind == TINY:
        return tiny_model(source.removeprefix(TINY_PREFIX))[0].name
    detection = hub_detection(source) if kind == HUB else detect_path(source)
    if detection.kind != MODEL:
        raise _not_a_base_model(source, detection)
    if detection.family is None and not detection.candidates:
        raise UserError(
            f"{source} is a model of no family this version supports ({detection.reason})",
            where="model.base",
            hint=f"Supported model types: {', '.join(family_names())}.",
        )
    if detection.family is None:
        raise UserError(
            f"cannot tell which model family {source} is ({detection.reason})",
            where="model.base",
            hint=f"Say it with --model-type (or model.type): {', '.join(detection.candidates)}.",
        )
    return detection.family


def check_family(detection: Detection, spec: FamilySpec) -> None:
    """Refuse a source that is not a base model of `spec`'s family, saying what it is instead."""
    what = detection.path.name if detection.path else "the model"
    if detection.kind != MODEL:
        raise _not_a_base_model(what, detection)
    if detection.family is None:
        if spec.name not in detection.candidates:
            raise UserError(
                f"{what} is not a {spec.title} model ({detection.reason})",
                where="model.base",
                hint=f"Set the model type to one of: {', '.join(detection.candidates)}."
                if detection.candidates
                else "No model family of this version recognises it.",
            )
        return
    if detection.family != spec.name:
        raise UserError(
            f"model type {spec.name} was asked for, but {what} is a {family_title(detection.family)} model "
            f"({detection.reason})",
            where="model.base",
            hint=f"Set the model type to {detection.family} (model.type / --model-type), or omit it to detect it.",
        )


def _not_a_base_model(what: str, detection: Detection) -> UserError:
    noun = "a LoRA" if detection.kind == LORA else "an embedding"
    return UserError(
        f"{what} is {noun}, not a base model ({detection.description})",
        where="model.base",
        hint="Pass a base model (diffusers folder or checkpoint).",
    )


def hub_detection(repo: str) -> Detection:
    """What a hub repo holds, from its `model_index.json` and its components' configs (no weights)."""
    with hub_errors(repo, "base model", where="model.base"):
        index = _read_json(_hub_file(repo, "model_index.json"))
        configs: dict[str, dict[str, Any]] = {}
        for file in pipeline_config_files(index):
            configs[file.split("/")[0]] = _read_json(_hub_file(repo, file))
    detection = detect_pipeline(index, configs)
    return Detection(**{**detection.__dict__, "path": Path(repo)})


def _hub_file(repo: str, name: str) -> str:
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(repo, name))


def _read_json(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def load_components(
    source: str, spec: FamilySpec, dtype: torch.dtype, names: tuple[str, ...], *, needed_by: str
) -> LoadedParts:
    """The components `names` (with their tokenizers) of the model `source` names (`model.config`): the parts a
    single file `needed_by` lacks. `source` must be a model of the same family."""
    kind = source_kind(source, where="model.config")
    if kind == TINY:
        found, _ = tiny_model(source.removeprefix(TINY_PREFIX))
        detection = Detection(MODEL, "tiny", found.name, "built-in tiny model", path=Path(source))
    elif kind == HUB:
        detection = hub_detection(source)
    else:
        detection = detect_path(Path(source).expanduser())
    if detection.family not in (None, spec.name) or (
        detection.family is None and spec.name not in detection.candidates
    ):
        raise UserError(
            f"{needed_by} is a {spec.title} file, but model.config names a {family_title(detection.family)} model "
            f"({detection.reason})",
            where="model.config",
            hint=f"The parts the file lacks must come from a {spec.title} model (a diffusers folder or hub id).",
        )
    if kind == TINY:
        parts = _from_tiny(source, spec)
    else:
        parts = from_pretrained(
            str(Path(source).expanduser()) if kind != HUB else source, source, spec, dtype, hub=kind == HUB, only=names
        )
    wanted = {name: parts.components[name] for name in names if name in parts.components}
    feeding = [spec.component(name).tokenizer for name in wanted]
    tokenizers = {tokenizer: parts.tokenizers[tokenizer] for tokenizer in feeding if tokenizer is not None}
    return LoadedParts(wanted, tokenizers, parts.scheduler, parts.prediction_type, parts.pipeline_config)


def _left_out(parts: LoadedParts, spec: FamilySpec, left_out: frozenset[str]) -> LoadedParts:
    """`parts` without the components `left_out` names, nor their tokenizers."""
    dropped = {spec.component(name).tokenizer for name in left_out}
    parts.components = {name: module for name, module in parts.components.items() if name not in left_out}
    parts.tokenizers = {name: tokenizer for name, tokenizer in parts.tokenizers.items() if name not in dropped}
    return parts


def _from_tiny(source: str, spec: FamilySpec) -> LoadedParts:
    from onetrainer.util.tiny.models import scheduler_config

    found, tiny = tiny_model(source.removeprefix(TINY_PREFIX))
    check_family(Detection(MODEL, "tiny", found.name, "built-in tiny model", path=Path(source)), spec)
    pipe = tiny.build(0)
    components = {c.name: getattr(pipe, c.name) for c in spec.components if getattr(pipe, c.name, None) is not None}
    tokenizers = {c.tokenizer: getattr(pipe, c.tokenizer) for c in spec.text_encoders if c.tokenizer}
    return LoadedParts(
        components=components,
        tokenizers=tokenizers,
        scheduler=scheduler_config(pipe),
        prediction_type=getattr(pipe.scheduler.config, "prediction_type", None),
        pipeline_config=pipeline_settings(dict(pipe.config)),
    )


def _component_class(index: dict[str, Any], name: str, source: str) -> Any:
    """The diffusers or transformers class `model_index.json` names for `name` (None where it has none)."""
    entry = index.get(name)
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
        return None
    library, class_name = entry
    if library not in LIBRARIES:
        raise UserError(
            f"{source}'s model_index.json names {library}.{class_name} for its {name}; only diffusers and "
            "transformers classes are loaded",
            where="model.base",
        )
    return getattr(importlib.import_module(library), class_name)


def from_pretrained(
    location: str,
    source: str,
    spec: FamilySpec,
    dtype: torch.dtype,
    *,
    hub: bool,
    only: tuple[str, ...] | None = None,
    quantise: Mapping[str, QuantisedStorage] | None = None,
) -> LoadedParts:
    """The family's components of a diffusers folder or hub repo (those in `only`, if given), in `dtype`
    (those in `quantise` streamed and quantised where their files allow it)."""
    quantise = quantise or {}
    with hub_errors(source, "base model", where="model.base", hub=hub):
        index = _read_json(_hub_file(location, "model_index.json") if hub else Path(location) / "model_index.json")
        components: dict[str, Any] = {}
        tokenizers: dict[str, Any] = {}
        for component in spec.components:
            if only is not None and component.name not in only:
                continue
            cls = _component_class(index, component.name, source)
            if cls is None:
                if component.optional:
                    continue
                raise UserError(f"{source} has no {component.name} ({component.title})", where="model.base")
            dtype_key = "torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"
            storage = quantise.get(component.name)
            streamed = None if storage is None else load_quantised(cls, location, component.name, storage, hub=hub)
            components[component.name] = (
                streamed
                if streamed is not None
                else cls.from_pretrained(location, subfolder=component.name, **{dtype_key: dtype})
            )
            if component.tokenizer is not None:
                tokenizer_class = _component_class(index, component.tokenizer, source)
                if tokenizer_class is None:
                    raise UserError(f"{source} has no {component.tokenizer} for its {component.name}")
                tokenizers[component.tokenizer] = tokenizer_class.from_pretrained(
                    location, subfolder=component.tokenizer
                )
        scheduler_file = f"scheduler/{SCHEDULER_CONFIG}"
        scheduler = _read_json(_hub_file(location, scheduler_file) if hub else Path(location) / scheduler_file)
    for component in spec.text_encoders:
        if component.name not in components or component.tokenizer is None:
            continue
        mismatch = tokenizer_mismatch(tokenizers[component.tokenizer], components[component.name].config.vocab_size)
        if mismatch is not None:
            raise UserError(
                f"the {component.tokenizer} of {source} {mismatch}",
                where="model.base",
                hint="It is probably not in the local HF cache while offline; connect once to download it."
                if hub
                else f"The {component.tokenizer}/ folder is incomplete or does not belong to this text encoder.",
            )
    return LoadedParts(
        components=components,
        tokenizers=tokenizers,
        scheduler=scheduler,
        prediction_type=scheduler.get("prediction_type") if spec.objective is Objective.DDPM else None,
        pipeline_config=pipeline_settings(index),
    )


def training_scheduler(spec: FamilySpec, config: dict[str, Any], prediction_type: str | None) -> Any:
    """The family objective's schedule from a scheduler config: DDPM's betas, or flow matching's shifts."""
    import inspect

    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    cls = FlowMatchEulerDiscreteScheduler if spec.objective is Objective.FLOW_MATCHING else DDPMScheduler
    accepted = set(inspect.signature(cls.__init__).parameters)
    settings = {key: value for key, value in config.items() if key in accepted}
    if spec.objective is Objective.DDPM:
        settings["prediction_type"] = prediction_type or "epsilon"
    return cls.from_config(settings)


def assemble(
    spec: FamilySpec, parts: LoadedParts, source: str, prediction: str | None, device: str, dtype: torch.dtype
) -> DiffusionModel:
    if spec.objective is Objective.DDPM:
        prediction = prediction or "epsilon"
    return DiffusionModel(
        spec=spec,
        components={name: _place(module, device, dtype) for name, module in parts.components.items()},
        tokenizers=parts.tokenizers,
        noise_scheduler=training_scheduler(spec, parts.scheduler, prediction),
        source=source,
        prediction_type=prediction if spec.objective is Objective.DDPM else None,
        scheduler_class=str(parts.scheduler.get("_class_name", "")),
        pipeline_config=parts.pipeline_config,
    )


def _place(module: Any, device: str, dtype: torch.dtype) -> Any:
    """Cast only when needed: diffusers warns on every dtype `.to()`, even a no-op one. A quantised component
    keeps its compute dtype; T5 keeps its fp32 layers under fp16 (`placement.kept_in_fp32`)."""
    import torch

    from onetrainer.model_setup.placement import kept_in_fp32

    if module_storage(module) is None and module.dtype != dtype:
        module = module.to(dtype=dtype)
    for layer in kept_in_fp32(module) if dtype == torch.float16 and module_storage(module) is None else []:
        torch.nn.Module.to(layer, dtype=torch.float32)
    return module.to(device)
