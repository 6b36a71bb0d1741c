"""Open any model, LoRA or embedding for format conversion, without loading a full model into memory.

A full model is exposed as a replayable stream of diffusers-named tensors read one at a time from the
input (safetensors is memory-mapped), plus what a diffusers folder needs besides weights (component
configs and classes, tokenizers), resolved only if that output is asked for. LoRAs and embeddings
are small and are read whole into the neutral forms of `util.keymaps`. Which family's layouts apply
comes from the input's detection (or `--model-type`), through the family spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.diffusion import PipelineParts
from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.model_loader.pipeline import check_family, load_model
from onetrainer.model_loader.single_file import (
    build_components,
    check_denoiser_held,
    single_file_format,
    single_file_state_dicts,
    stream_single_file,
    text_encoder_layers,
)
from onetrainer.model_loader.tokenizers import load_tokenizer
from onetrainer.util.detect import EMBEDDING, LORA, MODEL, Detection, detect_path, read_header
from onetrainer.util.enums import PredictionType
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, family_title, find_family, get_family, is_zero_terminal_snr

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel, WeightsStream

HUB_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/*",
    "tokenizer*/*",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
]
WEIGHT_FILES = ("diffusion_pytorch_model", "model")


@dataclass
class ConversionSource:
    """One opened input. `kind` is MODEL, LORA or EMBEDDING; the fields of the other kinds stay empty."""

    kind: str
    spec: FamilySpec
    """The family whose layouts read and write this input (for an undetermined adapter, a candidate's)."""
    family: str | None
    """The family, when the input or the user says it; None when it is undetermined."""
    detection: Detection
    prediction_type: str | None = None
    """"epsilon" / "v_prediction" where the input says (metadata, scheduler config); None where it does not."""
    metadata: dict[str, str] = field(default_factory=dict)
    stream: WeightsStream | None = None
    pipeline_parts: Callable[[], PipelineParts] | None = None
    """For a model: what a diffusers folder needs besides weights; resolved on first call."""
    lora_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    lora_alphas: dict[str, float] = field(default_factory=dict)
    lora_kind: str | None = None
    embedding: dict[str, torch.Tensor] = field(default_factory=dict)
    placeholder: str | None = None
    architecture: Mapping[str, Mapping[str, Any]] | None = None
    """For a LoRA: the component configs of the model it is for (`--config`), where its kohya names depend
    on them (`LoraNaming.for_model`); None: the family's released architecture."""
    zero_terminal_snr: bool = False
    """For a model: its schedule is rescaled to zero terminal SNR (scheduler config, ComfyUI's marker)."""

    @property
    def known_spec(self) -> FamilySpec | None:
        return self.spec if self.family is not None else None


@contextlib.contextmanager
def open_conversion_source(
    source: str | Path,
    *,
    model_type: str | None = None,
    config: str | None = None,
    tokenizer: str | None = None,
    prediction_type: PredictionType = PredictionType.AUTO,
) -> Iterator[ConversionSource]:
    """Open `source` (file, diffusers folder, hub id or tiny:<family>); files stay open inside the block.

    A `prediction_type` other than auto replaces what the input says: some families' single files carry
    no marker, and only the user knows which prediction type theirs has.
    """
    source = str(source)
    kind = source_kind(source, where="model.base")
    if kind == TINY:
        yield _in_memory(load_model(source, model_type=model_type, prediction_type=prediction_type), source)
        return
    path = _hub_snapshot(source) if kind == HUB else Path(source).expanduser()
    detection = detect_path(path)
    if prediction_type is not PredictionType.AUTO:
        detection = dataclasses.replace(detection, prediction_type=prediction_type.value)
    if detection.kind == LORA:
        yield _lora(detection, model_type, config)
    elif detection.kind == EMBEDDING:
        yield _embedding(detection, model_type)
    else:
        spec = _model_family(detection, model_type)
        if path.is_dir():
            yield _folder(path, detection, spec)
        else:
            with WeightsFile(path) as weights:
                lacking = _lacking(weights, spec)
                with _companion(config, spec, lacking, weights.path.name) as companion:
                    yield _single_file(weights, detection, spec, config, tokenizer, companion)


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    with hub_errors(repo, "model", where="model.base"):
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))


def _model_family(detection: Detection, wanted: str | None) -> FamilySpec:
    name = wanted or detection.family
    if name is None:
        what = detection.path.name if detection.path else "the model"
        choices = ", ".join(detection.candidates) or "a model type"
        raise UserError(
            f"cannot tell which model family {what} is ({detection.reason})",
            hint=f"Say it with --model-type: {choices}.",
        )
    spec = get_family(name)
    check_family(detection, spec)
    return spec


def _adapter_family(detection: Detection, wanted: str | None, what: str) -> tuple[FamilySpec, str | None]:
    """(the family whose layouts to read with, the family if known) of a LoRA or embedding.

    One made for another architecture is refused, naming it. Where the evidence leaves several
    families (which share their adapter layouts), the first candidate's layouts read it and the
    family stays undetermined.
    """
    name = detection.path.name if detection.path else what
    family = detection.family
    if wanted is not None and not detection.could_be(wanted):
        raise UserError(
            f"{name} is {what} for {detection.family_titles} ({detection.reason}), not for {family_title(wanted)}",
            hint=f"Pass --model-type {family or ' or '.join(detection.candidates)}, or omit it to detect it.",
        )
    known = family or wanted
    if known is not None:
        spec = find_family(known)
        if spec is None:
            raise UserError(f"{name} is {what} for {family_title(known)}, which this version does not convert")
        return spec, known
    if not detection.candidates:
        raise UserError(
            f"cannot tell which model family {name} is ({detection.reason})", hint="Say it with --model-type."
        )
    return get_family(detection.candidates[0]), None


def _lora(detection: Detection, wanted: str | None, config: str | None) -> ConversionSource:
    from onetrainer.model.adapters.lora_file import read_lora_file

    path = detection.path
    assert path is not None
    if detection.layout not in ("kohya", "peft"):
        raise UserError(
            f"{path.name} is a LoRA in the {detection.layout} layout, which convert does not read",
            hint="Supported LoRA layouts: kohya / LyCORIS and diffusers (peft).",
        )
    spec, known = _adapter_family(detection, wanted, "a LoRA")
    architecture = None if config is None else resolve_architecture(config, spec, detection.prediction_type).configs
    lora = read_lora_file(path, spec, configs=architecture)
    return ConversionSource(
        LORA,
        spec,
        known,
        detection,
        detection.prediction_type,
        _header_metadata(path),
        lora_tensors=lora.tensors,
        lora_alphas=lora.alphas,
        lora_kind=lora.kind,
        architecture=lora.architecture,
    )


def _embedding(detection: Detection, wanted: str | None) -> ConversionSource:
    from onetrainer.model.adapters.embedding import read_embedding_file

    path = detection.path
    assert path is not None
    spec, known = _adapter_family(detection, wanted, "an embedding")
    metadata = _header_metadata(path)
    placeholder = metadata.get("modelspec.trigger_phrase") or path.stem
    if detection.layout == "diffusers":
        placeholder = next(iter(read_header(path)[0]))
    return ConversionSource(
        EMBEDDING,
        spec,
        known,
        detection,
        detection.prediction_type,
        metadata,
        embedding=read_embedding_file(path, spec),
        placeholder=placeholder,
    )


def _header_metadata(path: Path) -> dict[str, str]:
    return dict(read_header(path)[1])


def _lacking(weights: WeightsFile, spec: FamilySpec) -> tuple[str, ...]:
    """The family's required components a single file holds no weights of (a transformer published alone); one
    without its denoiser is refused."""
    held = _held(weights, spec)
    check_denoiser_held(held, spec, weights.keys(), weights.path.name)
    return tuple(c.name for c in spec.components if c.name not in held and not c.optional)


@contextlib.contextmanager
def _companion(
    config: str | None, spec: FamilySpec, lacking: tuple[str, ...], needed_by: str
) -> Iterator[ConversionSource | None]:
    """The model `--config` names, opened for the parts a single file lacks (None when it lacks none)."""
    if not lacking or config is None:
        yield None
        return
    kind = source_kind(config, where="model.config")
    if kind == TINY:
        yield _in_memory(load_model(config, model_type=spec.name), config)
        return
    if kind == HUB:
        with hub_errors(config, "model", where="model.config"):
            path = Path(snapshot_parts(config, lacking, spec))
    else:
        path = Path(config).expanduser()
    detection = detect_path(path)
    if detection.family != spec.name:
        raise UserError(
            f"{needed_by} is a {spec.title} file, but --config names a {family_title(detection.family)} model "
            f"({detection.reason})",
            where="model.config",
            hint=f"The parts the file lacks ({', '.join(lacking)}) must come from a {spec.title} model.",
        )
    yield _folder(path, detection, spec)


def snapshot_parts(repo: str, components: tuple[str, ...], spec: FamilySpec) -> str:
    """A hub snapshot with the configs and tokenizers of every component, and the weights of `components` only."""
    from huggingface_hub import snapshot_download

    weights = [f"{name}/*.safetensors*" for name in components]
    tokenizers = [f"{spec.component(name).tokenizer}/*" for name in components if spec.component(name).tokenizer]
    patterns = ["model_index.json", "*/config.json", "scheduler/*", *tokenizers, *weights]
    return str(snapshot_download(repo, allow_patterns=patterns))


def _single_file(
    weights: WeightsFile,
    detection: Detection,
    spec: FamilySpec,
    config: str | None,
    tokenizer: str | None,
    companion: ConversionSource | None = None,
) -> ConversionSource:
    """A single file; `companion` supplies the parts it lacks (from `--config`)."""
    resolved: dict[str, Any] = {}
    supplied = {name for name in spec.component_names if companion is not None and name not in _held(weights, spec)}

    schedule = single_file_format(spec).schedule(weights.keys())

    def architecture_layers() -> dict[str, int] | None:
        return resolved["layers"] if resolved else None

    def parts() -> PipelineParts:
        """Architecture and tokenizers; a file that does not say its prediction type gets the family's default."""
        if not resolved:
            lacking = _lacking(weights, spec)
            if lacking and companion is None:
                raise UserError(
                    f"{weights.path.name} holds no {', '.join(spec.component(n).title for n in lacking)}, which a "
                    "diffusers folder needs",
                    where="model.config",
                    hint=f"Name a {spec.title} diffusers folder or hub id that has them with --config.",
                )
            architecture = resolve_architecture(config, spec, detection.prediction_type)
            layers = text_encoder_layers(architecture, spec)
            shapes = single_file_state_dicts(weights, spec, text_encoder_layers=layers, meta=True)
            build_components(shapes, architecture, spec, weights.path.name, check_only=True)
            tokenizers = {
                component.tokenizer: load_tokenizer(tokenizer, architecture, spec, component.name)
                for component in spec.text_encoders
                if component.tokenizer is not None
                and component.name in architecture.configs
                and component.name not in supplied
            }
            if companion is not None and companion.pipeline_parts is not None:
                theirs = companion.pipeline_parts().tokenizers
                tokenizers.update(
                    {c.tokenizer: theirs[c.tokenizer] for c in spec.text_encoders if c.name in supplied and c.tokenizer}
                )
            configs = {**architecture.configs, "scheduler": {**architecture.configs["scheduler"], **schedule}}
            resolved["parts"] = PipelineParts(configs, architecture.classes, tokenizers, architecture.settings)
            resolved["layers"] = layers
        parts: PipelineParts = resolved["parts"]
        return parts

    def stream(meta: bool, components: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        own = tuple(name for name in components if name not in supplied)
        if own:
            yield from stream_single_file(
                weights, spec, text_encoder_layers=architecture_layers(), components=own, meta=meta
            )
        others = tuple(name for name in components if name in supplied)
        if others and companion is not None and companion.stream is not None:
            yield from companion.stream(meta, others)

    return ConversionSource(
        MODEL,
        spec,
        spec.name,
        detection,
        detection.prediction_type,
        dict(weights.metadata),
        stream,
        parts,
        zero_terminal_snr=_zero_terminal_snr(config, spec, detection.prediction_type, schedule),
    )


def _zero_terminal_snr(config: str | None, spec: FamilySpec, prediction: str | None, schedule: dict[str, Any]) -> bool:
    """Whether a single file's model is on the zero-terminal-SNR schedule: its own marker, else the scheduler of
    the architecture `--config` names (read from its configs alone, so that a single file converted to another
    single file keeps the schedule the user named)."""
    if config is None or schedule:
        return is_zero_terminal_snr(schedule)
    return is_zero_terminal_snr(resolve_architecture(config, spec, prediction).configs["scheduler"])


def _held(weights: WeightsFile, spec: FamilySpec) -> set[str]:
    held = single_file_state_dicts(weights, spec, text_encoder_layers=None, meta=True)
    return {name for name, state in held.items() if state}


def _folder(path: Path, detection: Detection, spec: FamilySpec) -> ConversionSource:
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    present = [c for c in spec.components if isinstance(index.get(c.name), list) and index[c.name][0] is not None]
    files = {component.name: _component_files(path, component.name) for component in present}
    configs = {c.name: json.loads((path / c.name / "config.json").read_text(encoding="utf-8")) for c in present}
    configs["scheduler"] = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    classes = {c.name: (str(index[c.name][0]), str(index[c.name][1])) for c in present}

    def parts() -> PipelineParts:
        import transformers

        tokenizers: dict[str, Any] = {}
        for component in present:
            if component.tokenizer is None:
                continue
            library, class_name = index[component.tokenizer]
            if library != "transformers":
                raise UserError(f"{path}'s model_index.json names {library}.{class_name} for its {component.tokenizer}")
            tokenizers[component.tokenizer] = getattr(transformers, class_name).from_pretrained(
                path / component.tokenizer
            )
        settings = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
        return PipelineParts(configs, classes, tokenizers, settings)

    def stream(meta: bool, components: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        for component in components:
            for file in files.get(component, []):
                with WeightsFile(file) as weights:
                    for key in weights:
                        yield f"{component}.{key}", weights.meta_tensor(key) if meta else weights.tensor(key)

    prediction = detection.prediction_type or configs["scheduler"].get("prediction_type")
    zero_snr = is_zero_terminal_snr(configs["scheduler"])
    return ConversionSource(
        MODEL, spec, spec.name, detection, prediction, {}, stream, parts, zero_terminal_snr=zero_snr
    )


def _component_files(folder: Path, component: str) -> list[Path]:
    """A component's weight files: one safetensors, its shards, or (weights-only) a .bin."""
    for stem in WEIGHT_FILES:
        base = folder / component / f"{stem}.safetensors"
        index = folder / component / f"{stem}.safetensors.index.json"
        if base.is_file():
            return [base]
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [index.parent / shard for shard in shards]
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / component / name).is_file():
            return [folder / component / name]
    raise UserError(f"{folder} has no weights for its {component}", where=str(folder / component))


def _in_memory(model: DiffusionModel, source: str) -> ConversionSource:
    """A model built in memory (the built-in tiny models) as a conversion source."""
    detection = Detection(MODEL, "tiny", model.spec.name, "built-in tiny model", model.prediction_type)
    return ConversionSource(
        MODEL,
        model.spec,
        model.spec.name,
        detection,
        model.prediction_type,
        {},
        model.weights_stream(),
        model.pipeline_parts,
        zero_terminal_snr=is_zero_terminal_snr(model.noise_scheduler.config),
    )
