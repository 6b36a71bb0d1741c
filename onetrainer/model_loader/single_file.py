"""Read any family's original single-file checkpoint into its diffusers components, key by key.

Keys are renamed with the family's own tables (`FamilySpec.single_file`; no diffusers single-file
internals, so nothing is downloaded), and each tensor is cast and placed as it is read. Components
are constructed from the architecture's configs with empty (meta) parameters and receive the
checkpoint's tensors by assignment, so no random initialisation runs and the weights exist once in
memory. A single file holds weights only: the architecture comes from the configs shipped for the
family (or the user's `model.config`), and each text encoder's tokenizer is looked for
(`tokenizers.load_tokenizer`). A file that holds only some parts (a transformer published alone, a UNet
saved alone) takes the others, with their tokenizers, from `model.config` when it names a model with
weights (a diffusers folder, hub id or tiny model).

A component to be stored quantised (`parts.<name>.weight_dtype` fp8, int8 or nf4) is built empty first
and filled as the file is read, each linear weight quantised as it arrives (`streaming.place`), from a
file read without its memory map: loading a 12 B transformer from its original file then holds the
quantised transformer and one tensor, never the whole in the load dtype.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.quantised import QuantisedStorage, mark_quantised
from onetrainer.model_loader.architecture import Architecture, resolve_architecture
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.pipeline import LoadedParts, load_components
from onetrainer.model_loader.streaming import place, unfilled
from onetrainer.model_loader.tokenizers import load_tokenizer
from onetrainer.util.detect import Detection
from onetrainer.util.enums import PredictionType
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Role, SingleFileFormat

if TYPE_CHECKING:
    import torch

EMA_PREFIX = "model_ema."
"""Where CompVis-style trainers keep the EMA copy of the denoiser, beside it, under names no reader maps."""


def read_single_file(
    path: Path,
    detection: Detection,
    spec: FamilySpec,
    *,
    prediction_type: PredictionType,
    config: str | Path | None,
    tokenizer: str | Path | None,
    dtype: torch.dtype,
    leave_out: frozenset[str] = frozenset(),
    quantise: Mapping[str, QuantisedStorage] | None = None,
    vae: str | Path | None = None,
) -> LoadedParts:
    """The `SingleFileReader` of every family with a `single_file` layout and a shipped architecture.

    Components in `leave_out` (optional ones the model config goes without) are not read. An optional
    component the file lacks comes from `model.config` when that names a model holding it. Components
    in `quantise` that the file holds are quantised while they are read. A `vae` (`model.vae`) takes the
    place of the file's VAE, which is then not read, so a checkpoint pruned of its VAE is complete with it.
    """
    # Precedence: the caller, the file's own metadata, an explicit architecture's scheduler, the family.
    prediction = None if prediction_type is PredictionType.AUTO else prediction_type.value
    prediction = prediction or detection.prediction_type
    wanted = tuple(name for name in spec.component_names if name not in leave_out)
    if vae is not None:
        wanted = tuple(name for name in wanted if name != spec.vae.name)
    quantise = quantise or {}
    with WeightsFile(path, mapped=not quantise) as weights:
        held = single_file_state_dicts(weights, spec, text_encoder_layers=None, components=wanted, meta=True)
        check_denoiser_held({name for name in wanted if held[name]}, spec, weights.keys(), path.name)
        check_text_to_image(held[spec.denoiser.name], spec, path.name)
        absent = [spec.component(name) for name in wanted if not held[name]]
        required = [c for c in absent if not c.optional]
        missing = absent if config is not None else required
        if required and config is None:
            component = required[0]
            raise UserError(
                f"{path.name} has no {component.title} weights; it is not a complete checkpoint",
                where=str(path),
                hint=f"Pass a full {spec.title} checkpoint, or name a diffusers folder or hub id that holds the "
                "missing parts as model.config (--config for sample and convert)."
                + (" A VAE alone can come from model.vae in a run config." if component.role is Role.VAE else ""),
            )
        architecture = resolve_architecture(None if config is None else str(config), spec, prediction)
        prediction = prediction or architecture.configs["scheduler"].get("prediction_type", "epsilon")
        layers = text_encoder_layers(architecture, spec)
        schedule = single_file_format(spec).schedule(weights.keys())
        quantised = tuple(name for name in wanted if name in quantise and held[name])
        streamed: dict[str, Any] = {}
        if quantised:
            shapes = single_file_state_dicts(weights, spec, text_encoder_layers=layers, components=quantised, meta=True)
            streamed = build_components(shapes, architecture, spec, path.name, check_only=True)
        state_dicts = single_file_state_dicts(
            weights,
            spec,
            text_encoder_layers=layers,
            dtype=dtype,
            components=wanted,
            into={name: (module, quantise[name]) for name, module in streamed.items()},
        )
    rest = None
    if missing:
        assert config is not None
        rest = load_components(str(config), spec, dtype, tuple(c.name for c in missing), needed_by=path.name)
    components = {**build_components(state_dicts, architecture, spec, path.name), **streamed}
    explicit = None if tokenizer is None else str(tokenizer)
    tokenizers = {
        component.tokenizer: load_tokenizer(explicit, architecture, spec, component.name)
        for component in spec.text_encoders
        if component.tokenizer is not None and component.name in components
    }
    if rest is not None:
        components.update(rest.components)
        tokenizers.update(rest.tokenizers)
    if vae is not None:
        from onetrainer.model_loader.vae import load_vae

        components[spec.vae.name] = load_vae(str(vae), dict(architecture.configs[spec.vae.name]), dtype)
    return LoadedParts(
        components=components,
        tokenizers=tokenizers,
        scheduler={**architecture.configs["scheduler"], **schedule},
        prediction_type=prediction,
        pipeline_config=architecture.settings,
    )


def check_denoiser_held(held: Collection[str], spec: FamilySpec, keys: Iterable[str], what: str) -> None:
    """Refuse a file without denoiser weights (the components `held` lack it): the denoiser is the model a file
    is, so it never comes from `model.config`, which would silently stand in for it (a file whose UNet is kept
    only as its EMA copy loaded the config model's UNet)."""
    if spec.denoiser.name in held:
        return
    title = spec.denoiser.title
    if any(key.startswith(EMA_PREFIX) for key in keys):
        raise UserError(
            f"{what} holds its {title} only as an EMA copy ({EMA_PREFIX}*), which onetrainer does not read",
            where="model.base",
            hint=f"Save it with the EMA weights as its {title} (a pruning tool's 'EMA only' choice) and pass that.",
        )
    raise UserError(
        f"{what} has no {title} weights",
        where="model.base",
        hint=f"Pass a file that holds the {title}: model.config / --config supplies only the text encoders, "
        "tokenizers and VAE a file lacks.",
    )


def check_text_to_image(denoiser: Mapping[str, torch.Tensor], spec: FamilySpec, what: str) -> None:
    """Refuse a denoiser that takes more input channels than the family's latents have (an inpainting or
    instruct-pix2pix model): it would load, fill the cache and only fail at the first training step."""
    layer = spec.denoiser.input_layer
    weight = None if layer is None else denoiser.get(layer)
    if weight is None:
        return
    taken = spec.input_channels(tuple(weight.shape))
    if taken != spec.latent_channels:
        raise UserError(
            f"{what} is an inpainting or instruct-pix2pix model: its {spec.denoiser.title} takes {taken} input "
            f"channels; onetrainer trains text-to-image models with {spec.latent_channels}",
            where="model.base",
            hint=f"Pass the text-to-image {spec.title} model it was made from.",
        )


def text_encoder_layers(architecture: Architecture, spec: FamilySpec) -> dict[str, int]:
    """Each text encoder's layer count in the architecture (a file may hold layers past it)."""
    return {
        component.name: int(architecture.configs[component.name]["num_hidden_layers"])
        for component in spec.text_encoders
        if "num_hidden_layers" in architecture.configs.get(component.name, {})
    }


def single_file_format(spec: FamilySpec) -> SingleFileFormat:
    if spec.single_file is None:
        raise UserError(f"{spec.title} models have no single-file layout in this version")
    return spec.single_file


def single_file_state_dicts(
    weights: WeightsFile,
    spec: FamilySpec,
    *,
    text_encoder_layers: Mapping[str, int] | None,
    dtype: torch.dtype | None = None,
    components: tuple[str, ...] | None = None,
    meta: bool = False,
    into: Mapping[str, tuple[torch.nn.Module, QuantisedStorage]] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Diffusers state dicts of the wanted components; a component the file lacks comes back empty.

    A component in `into` is not collected: each of its tensors is placed in the given empty module
    (built and checked against the file's names and shapes) as it is read, stored as given.
    """
    wanted = components or spec.component_names
    into = into or {}
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in wanted}
    compute = {name: storage.compute_dtype for name, (_, storage) in into.items()}
    stream = stream_single_file(
        weights,
        spec,
        text_encoder_layers=text_encoder_layers,
        dtype=dtype,
        components=wanted,
        meta=meta,
        dtypes=compute,
    )
    for key, tensor in stream:
        component, _, rest = key.partition(".")
        if component in into:
            module, storage = into[component]
            if not place(module, rest, _aligned(tensor), storage):
                raise UserError(f"{weights.path.name}: the {component} it was checked against has no tensor {rest}")
        else:
            parts[component][rest] = tensor
    for name, (module, storage) in into.items():
        if missing := unfilled(module):
            raise UserError(f"{weights.path.name}: no weights were read for {', '.join(missing[:3])} of {name}")
        mark_quantised(module, storage.format)
    return parts


def stream_single_file(
    weights: WeightsFile,
    spec: FamilySpec,
    *,
    text_encoder_layers: Mapping[str, int] | None,
    dtype: torch.dtype | None = None,
    components: tuple[str, ...] | None = None,
    meta: bool = False,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(component.key, tensor)` in diffusers naming, reading one source tensor at a time.

    Floating-point tensors take `dtype`, or their component's entry in `dtypes`: a quantised component's
    tensors go straight to its compute dtype, so no copy in the load dtype outlives the read. With `meta`,
    tensors are data-less stand-ins (for planning output headers without reading data).
    """
    wanted = components or spec.component_names
    dtypes = dtypes or {}
    keys = weights.keys()
    converter = single_file_format(spec).reader(keys, text_encoder_layers=text_encoder_layers)
    for key in keys:
        target = converter.table.map_key(key, reverse=True)
        component = None if target is None else target.partition(".")[0]
        if component is not None and component not in wanted:
            continue
        tensor = weights.meta_tensor(key) if meta else weights.tensor(key)
        cast = dtypes.get(component, dtype) if component is not None else dtype
        if cast is not None and tensor.is_floating_point():
            tensor = tensor.to(cast)
        yield from converter.feed(key, tensor)
    converter.finish()


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Construct modules with parameters on the meta device (buffers stay real), as diffusers does."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def build_module(library: str, class_name: str, config: dict[str, Any]) -> Any:
    """A diffusers or transformers module of `class_name` from its config dict (weights not initialised here)."""
    cls = getattr(importlib.import_module(library), class_name)
    if library == "transformers":
        return cls(cls.config_class.from_dict(config))
    return cls.from_config(config)


def build_components(
    state_dicts: dict[str, dict[str, torch.Tensor]],
    architecture: Architecture,
    spec: FamilySpec,
    source: str,
    *,
    check_only: bool = False,
) -> dict[str, Any]:
    """The family's components from their configs, holding the given tensors (assigned; copied only where unaligned).

    With `check_only` the tensors may be meta stand-ins: names and shapes are checked against the
    architecture and nothing is assigned (how a conversion validates `--config` before writing).
    """
    built: dict[str, Any] = {}
    for name, state_dict in state_dicts.items():
        if not state_dict:
            continue
        config = dict(architecture.configs[name])
        conv_in = state_dict.get("conv_in.weight")
        if conv_in is not None and name == spec.denoiser.name:
            config["in_channels"] = int(conv_in.shape[1])  # inpainting models take 9 channels
        library, class_name = architecture.classes[name]
        with empty_weights():
            module = build_module(library, class_name, config)
        assign_state_dict(
            module,
            state_dict,
            what=f"the {spec.component(name).title} of {source} does not match the {architecture.name}",
            hint="Pass the architecture it was made with as a diffusers folder or hub id (model.config / --config).",
            check_only=check_only,
        )
        built[name] = module.eval()
    return built


def assign_state_dict(
    module: Any, state_dict: dict[str, torch.Tensor], *, what: str, hint: str, check_only: bool = False
) -> None:
    """Load `state_dict` into a module built with empty weights; any key or shape mismatch is a user error.

    A tied weight (T5's `encoder.embed_tokens` is its `shared` table) is one tensor under two names: a
    file may hold either name alone, and the ties are made again once the tensors are in place.
    """
    expected = module.state_dict()
    tied = _tied_weights(module)
    state_dict = {**{alias: state_dict[key] for alias, key in tied.items() if key in state_dict}, **state_dict}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    problems = [
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise UserError(f"{what}: " + "; ".join(problems), hint=hint)
    if not check_only:
        state_dict = {key: _aligned(tensor) for key, tensor in state_dict.items()}
        module.load_state_dict(state_dict, strict=True, assign=True)
        if tied:
            module.tie_weights()


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, copied where its data does not start on a `DATA_ALIGNMENT` boundary.

    A memory-mapped file's tensors lie where the file packs them (safetensors allows no gaps between
    tensors), and split fused layers are views into them: on AVX-512 CPUs an unaligned weight takes other
    kernels, so a model read from a single file computed other last bits than the same weights loaded from
    a folder or held in memory (a CLIP projection after odd-sized tensors, in SD 3's files).
    """
    from onetrainer.util.safetensors_stream import DATA_ALIGNMENT

    if tensor.device.type != "cpu" or tensor.data_ptr() % DATA_ALIGNMENT == 0:
        return tensor
    return tensor.clone()


def _tied_weights(module: Any) -> dict[str, str]:
    """A transformers model's tied state-dict keys: alias -> the key whose tensor it shares."""
    tied = getattr(module, "_tied_weights_keys", None)
    return {str(alias): str(key) for alias, key in tied.items()} if isinstance(tied, dict) else {}
