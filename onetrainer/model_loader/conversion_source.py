"""Open any model, LoRA or embedding for format conversion, without loading a full model into memory.

A full model is exposed as a replayable stream of diffusers-named tensors read one at a time from the
input (safetensors is memory-mapped), plus what a diffusers folder needs besides weights (component
configs and a tokenizer), resolved only if that output is asked for. LoRAs and embeddings are small
and are read whole into the neutral forms of `util.keymaps`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_loader.architecture import load_tokenizer, resolve_architecture
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.model_loader.single_file import build_components, single_file_state_dicts, stream_single_file
from onetrainer.model_loader.stable_diffusion import check_family, load_stable_diffusion
from onetrainer.util.detect import EMBEDDING, LORA, MODEL, Detection, detect_path, read_header
from onetrainer.util.enums import ModelType, PredictionType
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.stable_diffusion import StableDiffusionModel, WeightsStream

SD_FAMILIES = ("sd15", "sd2")
FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "flux": "Flux", "sd3": "SD 3"}
COMPONENT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
HUB_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/*",
    "tokenizer/*",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
]


@dataclass
class ConversionSource:
    """One opened input. `kind` is MODEL, LORA or EMBEDDING; the fields of the other kinds stay empty."""

    kind: str
    family: str | None
    detection: Detection
    prediction_type: str | None = None
    """"epsilon" / "v_prediction" where the input says (metadata, scheduler config); None where it does not."""
    metadata: dict[str, str] = field(default_factory=dict)
    stream: WeightsStream | None = None
    pipeline_parts: Callable[[], tuple[dict[str, dict[str, Any]], CLIPTokenizer]] | None = None
    """For a model: (component configs, tokenizer) for a diffusers folder; resolved on first call."""
    lora_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    lora_alphas: dict[str, float] = field(default_factory=dict)
    lora_kind: str | None = None
    embedding: torch.Tensor | None = None
    placeholder: str | None = None


@contextlib.contextmanager
def open_conversion_source(
    source: str | Path,
    *,
    model_type: ModelType | None = None,
    config: str | None = None,
    tokenizer: str | None = None,
    prediction_type: PredictionType = PredictionType.AUTO,
) -> Iterator[ConversionSource]:
    """Open `source` (file, diffusers folder, hub id or tiny:<family>); files stay open inside the block.

    A `prediction_type` other than auto replaces what the input says: SD 2.x single files often carry
    no marker, and only the user knows whether theirs is the 512 epsilon or the 768 v model.
    """
    source = str(source)
    kind = source_kind(source, where="model.base")
    if kind == TINY:
        yield _in_memory(load_stable_diffusion(source, model_type=model_type, prediction_type=prediction_type), source)
        return
    path = _hub_snapshot(source) if kind == HUB else Path(source).expanduser()
    detection = detect_path(path)
    if prediction_type is not PredictionType.AUTO:
        detection = dataclasses.replace(detection, prediction_type=prediction_type.value)
    if detection.kind == LORA:
        yield _lora(detection, model_type)
    elif detection.kind == EMBEDDING:
        yield _embedding(detection, model_type)
    elif path.is_dir():
        yield _folder(path, detection, check_family(detection, model_type))
    else:
        with WeightsFile(path) as weights:
            yield _single_file(weights, detection, check_family(detection, model_type), config, tokenizer)


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    with hub_errors(repo, "model", where="model.base"):
        return Path(snapshot_download(repo, allow_patterns=HUB_PATTERNS))


def _adapter_family(detection: Detection, wanted: ModelType | None, what: str) -> tuple[str, str | None]:
    """(the family whose key naming to read with, the family if known) of a LoRA or embedding.

    One made for another architecture is refused, naming it. SD 1.x and 2.x share their adapter
    layouts, so an undetermined one reads with SD 1.x naming and stays undetermined.
    """
    name = detection.path.name if detection.path else what
    family = detection.family
    if family is not None and family not in SD_FAMILIES:
        raise UserError(
            f"{name} is {what} for {FAMILY_NAMES.get(family, family)} ({detection.reason}); "
            "this version converts SD 1.x/2.x files only",
        )
    if wanted is not None and family is not None and family != wanted.value:
        raise UserError(
            f"{name} is {what} for {FAMILY_NAMES[family]} ({detection.reason}), not for {FAMILY_NAMES[wanted.value]}",
            hint=f"Pass --model-type {family}, or omit it to detect it.",
        )
    known = family or (wanted.value if wanted else None)
    return known or SD_FAMILIES[0], known


def _lora(detection: Detection, wanted: ModelType | None) -> ConversionSource:
    from onetrainer.model.adapters.lora_file import read_lora_file

    path = detection.path
    if detection.layout not in ("kohya", "peft"):
        raise UserError(
            f"{path.name} is a LoRA in the {detection.layout} layout, which convert does not read",
            hint="Supported LoRA layouts: kohya / LyCORIS and diffusers (peft).",
        )
    naming, known = _adapter_family(detection, wanted, "a LoRA")
    lora = read_lora_file(path, naming)
    return ConversionSource(
        LORA,
        known,
        detection,
        detection.prediction_type,
        _header_metadata(path),
        lora_tensors=lora.tensors,
        lora_alphas=lora.alphas,
        lora_kind=lora.kind,
    )


def _embedding(detection: Detection, wanted: ModelType | None) -> ConversionSource:
    from onetrainer.model.adapters.embedding import read_embedding_file

    path = detection.path
    naming, known = _adapter_family(detection, wanted, "an embedding")
    metadata = _header_metadata(path)
    placeholder = metadata.get("modelspec.trigger_phrase") or path.stem
    if detection.layout == "diffusers":
        placeholder = next(iter(read_header(path)[0]))
    return ConversionSource(
        EMBEDDING,
        known,
        detection,
        detection.prediction_type,
        metadata,
        embedding=read_embedding_file(path, naming),
        placeholder=placeholder,
    )


def _header_metadata(path: Path) -> dict[str, str]:
    return dict(read_header(path)[1])


def _single_file(
    weights: WeightsFile, detection: Detection, family: ModelType, config: str | None, tokenizer: str | None
) -> ConversionSource:
    resolved: dict[str, Any] = {}

    def parts() -> tuple[dict[str, dict[str, Any]], CLIPTokenizer]:
        """Architecture and tokenizer; SD 2.x files that do not say otherwise get the 768-v architecture."""
        if not resolved:
            said = detection.prediction_type
            v_prediction = said == "v_prediction" or (said is None and family is ModelType.SD2)
            architecture = resolve_architecture(config, family, v_prediction=v_prediction)
            shapes = single_file_state_dicts(
                weights,
                family.value,
                text_encoder_layers=architecture.configs["text_encoder"].get("num_hidden_layers"),
                meta=True,
            )
            build_components(shapes, architecture, weights.path.name, check_only=True)
            resolved["configs"] = architecture.configs
            resolved["tokenizer"] = load_tokenizer(tokenizer, architecture, family)
        return resolved["configs"], resolved["tokenizer"]

    def stream(meta: bool, components: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        layers = resolved["configs"]["text_encoder"].get("num_hidden_layers") if resolved else None
        yield from stream_single_file(
            weights, family.value, text_encoder_layers=layers, components=components, meta=meta
        )

    return ConversionSource(
        MODEL, family.value, detection, detection.prediction_type, dict(weights.metadata), stream, parts
    )


def _folder(path: Path, detection: Detection, family: ModelType) -> ConversionSource:
    from transformers import CLIPTokenizer

    files = {component: _component_files(path, component) for component in COMPONENT_FILES}
    configs = {
        name: json.loads((path / relative).read_text(encoding="utf-8"))
        for name, relative in (
            ("unet", "unet/config.json"),
            ("vae", "vae/config.json"),
            ("text_encoder", "text_encoder/config.json"),
            ("scheduler", "scheduler/scheduler_config.json"),
        )
    }

    def parts() -> tuple[dict[str, dict[str, Any]], CLIPTokenizer]:
        return configs, CLIPTokenizer.from_pretrained(path / "tokenizer")

    def stream(meta: bool, components: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
        for component in components:
            for file in files[component]:
                with WeightsFile(file) as weights:
                    for key in weights:
                        yield f"{component}.{key}", weights.meta_tensor(key) if meta else weights.tensor(key)

    return ConversionSource(MODEL, family.value, detection, detection.prediction_type or "epsilon", {}, stream, parts)


def _component_files(folder: Path, component: str) -> list[Path]:
    """A component's weight files: one safetensors, its shards, or (weights-only) a .bin."""
    base = folder / component / COMPONENT_FILES[component]
    pytorch = folder / component / ("pytorch_model.bin" if component == "text_encoder" else f"{base.name}.bin")
    index = base.with_name(base.name + ".safetensors.index.json")
    if base.with_suffix(".safetensors").is_file():
        return [base.with_suffix(".safetensors")]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [index.parent / shard for shard in shards]
    if pytorch.is_file():
        return [pytorch]
    raise UserError(f"{folder} has no weights for its {component}", where=str(folder / component))


def _in_memory(model: StableDiffusionModel, source: str) -> ConversionSource:
    """A model built in memory (the built-in tiny models) as a conversion source."""
    detection = Detection(MODEL, "tiny", model.model_type.value, "built-in tiny model", model.prediction_type)
    return ConversionSource(
        MODEL,
        model.model_type.value,
        detection,
        model.prediction_type,
        {},
        model.weights_stream(),
        lambda: (model.component_configs(), model.tokenizer),
    )
