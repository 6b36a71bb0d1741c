"""Full models: single-file checkpoints (`.safetensors`, `.ckpt`) and diffusers folders.

For each component (UNet, VAE, text encoders) we report tensor and parameter counts and dtypes; a
diffusers folder's components come from `model_index.json` and each component's weight files'
headers, so nothing is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onetrainer.inspection.metadata import group_metadata
from onetrainer.inspection.result import Inspection, human_count
from onetrainer.inspection.tensors import TensorIndex, describe_group, read_index
from onetrainer.util.config.types import WEIGHT_SUFFIXES
from onetrainer.util.detect import PICKLE, Detection
from onetrainer.util.family import family_title


def family_name(detection: Detection) -> str:
    """The family's title, or the families it could be when the evidence cannot tell."""
    if detection.family is not None:
        return family_title(detection.family)
    if detection.candidates:
        return "/".join(family_title(name) for name in detection.candidates) + " (undetermined)"
    return "unknown-family"


def _grouping(detection: Detection, keys: list[str]) -> tuple[Callable[[str], str], list[str]]:
    """Which component each key reads into (by the family's own single-file reader, so a ComfyUI checkpoint's
    bundled parts count as theirs), and the order to show them in (the file layout's, then the family's);
    "other" for a key no part holds."""
    spec = detection.spec
    if spec is None or spec.single_file is None:
        return lambda _: "other", []
    table = spec.single_file.reader(keys).table

    def component(key: str) -> str:
        target = table.map_key(key, reverse=True)
        return "other" if target is None else target.partition(".")[0]

    return component, [name for _, name in spec.single_file.component_prefixes] + list(spec.component_names)


def _input_channels(detection: Detection, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The latent channels the file's denoiser takes (more than the family's latents: an inpainting model), read
    from the weight the family's reader maps to the denoiser's input layer; None where no family says which."""
    spec = detection.spec
    layer = None if spec is None else spec.denoiser.input_layer
    if spec is None or spec.single_file is None or layer is None:
        return None
    table = spec.single_file.reader(list(shapes)).table
    target = f"{spec.denoiser.name}.{layer}"
    shape = next((shape for key, shape in shapes.items() if table.map_key(key, reverse=True) == target), None)
    return None if shape is None else spec.input_channels(shape)


def _not_text_to_image(detection: Detection, channels: int | None) -> str:
    """A note for the summary of a denoiser that takes more than the family's latents (which `train` refuses)."""
    spec = detection.spec
    if spec is None or channels is None or channels == spec.latent_channels:
        return ""
    return (
        f"; an inpainting or instruct-pix2pix model: its {spec.denoiser.title} takes {channels} input channels, "
        f"onetrainer trains text-to-image models with {spec.latent_channels}"
    )


def inspect_single_file(path: Path, index: TensorIndex, detection: Detection) -> Inspection:
    component_of, order = _grouping(detection, list(index.entries))
    groups: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for key, entry in index.entries.items():
        groups.setdefault(component_of(key), {})[key] = entry
    components = {
        name: describe_group(groups[name])
        for name in sorted(groups, key=lambda name: (order.index(name) if name in order else len(order), name))
    }
    shapes = index.shapes
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    conv_in = next((s for k, s in shapes.items() if k.endswith("input_blocks.0.0.weight") and len(s) == 4), None)
    channels = _input_channels(detection, shapes)
    total = sum(int(component["parameters"]) for component in components.values())
    fmt = "ckpt" if index.container == PICKLE else "single-file"
    details: dict[str, Any] = {
        "detected_by": detection.reason,
        "prediction_type": detection.prediction_type,
        "in_channels": channels if channels is not None else conv_in[1] if conv_in is not None else None,
        "context_dim": context,
        "parameters": total,
        "components": components,
        "metadata": group_metadata(index.metadata),
    }
    summary = f"{family_name(detection)} model, {fmt}, {human_count(total)} parameters"
    summary += _not_text_to_image(detection, channels)
    return Inspection("model", fmt, detection.family, path, summary, details)


def _weight_files(folder: Path) -> list[Path]:
    """The component's weight files: safetensors preferred, the default (non-variant) ones preferred."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix in WEIGHT_SUFFIXES)
    safetensors = [path for path in files if path.suffix == ".safetensors"] or files
    plain = [path for path in safetensors if len(path.name.split(".")) == 2]
    return plain or safetensors


def _component(folder: Path, library_class: list[str]) -> dict[str, Any]:
    described: dict[str, Any] = {"class": f"{library_class[0]}.{library_class[1]}"}
    if not folder.is_dir():
        return described
    files = _weight_files(folder)
    if files:
        entries: dict[str, tuple[str, tuple[int, ...]]] = {}
        for weights in files:
            entries.update(read_index(weights).entries)
        described.update(describe_group(entries))
        described["files"] = [path.name for path in files]
    return described


def inspect_diffusers_folder(path: Path, detection: Detection) -> Inspection:
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    components = {
        name: _component(path / name, value)
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
    }
    total = sum(int(component.get("parameters", 0)) for component in components.values())
    details: dict[str, Any] = {
        "detected_by": detection.reason,
        "pipeline": index.get("_class_name"),
        "diffusers_version": index.get("_diffusers_version"),
        "prediction_type": detection.prediction_type,
        "parameters": total,
        "components": components,
    }
    summary = f"{family_name(detection)} model, diffusers folder, {human_count(total)} parameters"
    return Inspection("model", "diffusers", detection.family, path, summary, details)
