"""Full models: single-file checkpoints (`.safetensors`, `.ckpt`) and diffusers folders.

For each component (UNet, VAE, text encoders) we report tensor and parameter counts and dtypes; a
diffusers folder's components come from `model_index.json` and each component's weight files'
headers, so nothing is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onetrainer.inspection.metadata import group_metadata
from onetrainer.inspection.result import Inspection, human_count
from onetrainer.inspection.tensors import TensorIndex, describe_group, read_index
from onetrainer.util.detect import PICKLE, Detection
from onetrainer.util.keymaps.stable_diffusion_single_file import COMPONENT_MARKERS, detect_single_file_family

FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")


def family_name(family: str | None) -> str:
    if family is None:
        return "SD 1.x/2.x (undetermined)"
    return FAMILY_NAMES.get(family, family)


def _component_of(key: str) -> str:
    for prefix, component in COMPONENT_MARKERS:
        if key.startswith(prefix):
            return component
    return "other"


def inspect_single_file(path: Path, index: TensorIndex, detection: Detection) -> Inspection:
    groups: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for key, entry in index.entries.items():
        groups.setdefault(_component_of(key), {})[key] = entry
    components = {name: describe_group(groups[name]) for name in sorted(groups, key=_component_order)}
    info = detect_single_file_family(index.shapes)
    total = sum(int(component["parameters"]) for component in components.values())
    fmt = "ckpt" if index.container == PICKLE else "single-file"
    details: dict[str, Any] = {
        "detected_by": detection.reason,
        "prediction_type": detection.prediction_type,
        "in_channels": info.in_channels,
        "context_dim": info.context_dim,
        "parameters": total,
        "components": components,
        "metadata": group_metadata(index.metadata),
    }
    summary = f"{family_name(detection.family)} model, {fmt}, {human_count(total)} parameters"
    return Inspection("model", fmt, detection.family, path, summary, details)


def _component_order(name: str) -> tuple[int, str]:
    order = [component for _, component in COMPONENT_MARKERS]
    return (order.index(name), name) if name in order else (len(order), name)


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
    summary = f"{family_name(detection.family)} model, diffusers folder, {human_count(total)} parameters"
    return Inspection("model", "diffusers", detection.family, path, summary, details)
