"""Textual-inversion embeddings: layout, vectors, width, and which base model they fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onetrainer.inspection.metadata import group_metadata
from onetrainer.inspection.models import family_name
from onetrainer.inspection.result import Inspection
from onetrainer.inspection.tensors import TensorIndex
from onetrainer.util.detect import Detection

ENCODER_NAMES = {"emb_params": "text encoder", "clip_l": "CLIP-L", "clip_g": "CLIP-G (bigG)", "t5": "T5"}


def inspect_embedding(path: Path, index: TensorIndex, detection: Detection) -> Inspection:
    tensors: dict[str, dict[str, Any]] = {}
    for key, (dtype, shape) in sorted(index.entries.items()):
        name = key.removeprefix("string_to_param.")
        tensors[name] = {
            "encoder": ENCODER_NAMES.get(name, "text encoder"),
            "vectors": shape[0] if len(shape) == 2 else 1,
            "width": shape[-1],
            "dtype": dtype,
        }
    vectors = max((tensor["vectors"] for tensor in tensors.values()), default=0)
    token = index.metadata.get("name") or _token(index)
    fmt = "a1111-pt" if index.container == "pickle" else detection.layout
    fitting = family_name(detection) if detection.family or detection.candidates else None
    details: dict[str, Any] = {
        "token": token,
        "vectors": vectors,
        "width": "+".join(str(tensor["width"]) for tensor in tensors.values()),
        "fits": fitting,
        "detected_by": detection.reason,
        "tensors": tensors,
        "metadata": group_metadata({k: v for k, v in index.metadata.items() if k != "name"}),
    }
    fits = f"fits {fitting}" if fitting else "base model undetermined"
    summary = f"embedding, {fmt} layout, {vectors} vector(s) of width {details['width']}, {fits}"
    return Inspection("embedding", fmt, detection.family, path, summary, details)


def _token(index: TensorIndex) -> str | None:
    """diffusers files name the tensor after the token; A1111 pickles keep it in string_to_param."""
    keys = list(index.entries)
    if len(keys) == 1 and keys[0] not in ENCODER_NAMES:
        return keys[0].removeprefix("string_to_param.")
    return None
