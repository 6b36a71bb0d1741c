"""A weights file's tensor list (name, dtype, shape) and metadata, from the header where possible.

Safetensors files are described from their JSON header alone, so a multi-GB checkpoint takes
milliseconds. Pickled checkpoints have no header: they are opened with `weights_only=True`
(memory-mapped where the format allows) through `util/detect.py`, the only pickle reader we have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onetrainer.inspection.result import count_text, dtype_name
from onetrainer.util.detect import SAFETENSORS, load_pickle_weights, sniff_container
from onetrainer.util.safetensors_meta import read_safetensors_header


@dataclass(frozen=True)
class TensorIndex:
    container: str
    """SAFETENSORS or PICKLE."""
    entries: dict[str, tuple[str, tuple[int, ...]]]
    """key -> (dtype name, shape)."""
    metadata: dict[str, str]
    scalar_reader: Callable[[Iterable[str]], dict[str, float]]
    """Reads the values of 0-dim or 1-element tensors (LoRA alphas) without loading the rest."""

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: shape for key, (_, shape) in self.entries.items()}

    def scalars(self, keys: Iterable[str]) -> dict[str, float]:
        return self.scalar_reader(keys)


def read_index(path: Path) -> TensorIndex:
    if sniff_container(path) == SAFETENSORS:
        metadata, entries = read_safetensors_header(path)
        named = {key: (dtype_name(dtype), shape) for key, (dtype, shape) in entries.items()}
        return TensorIndex(SAFETENSORS, named, metadata, lambda keys: _safetensors_scalars(path, keys))
    tensors, metadata = load_pickle_weights(path)
    named = {key: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for key, t in tensors.items()}
    return TensorIndex(
        "pickle", named, metadata, lambda keys: {key: float(tensors[key].float().reshape(-1)[0]) for key in keys}
    )


def _safetensors_scalars(path: Path, keys: Iterable[str]) -> dict[str, float]:
    """numpy reads float16/32 scalars without importing torch; bfloat16 needs torch."""
    from safetensors import safe_open

    wanted = list(keys)
    values: dict[str, float] = {}
    with safe_open(str(path), framework="numpy") as handle:
        for key in wanted:
            try:
                values[key] = float(handle.get_tensor(key).reshape(-1)[0])
            except TypeError:
                break
    missing = [key for key in wanted if key not in values]
    if missing:
        with safe_open(str(path), framework="pt") as handle:
            for key in missing:
                values[key] = float(handle.get_tensor(key).float().reshape(-1)[0])
    return values


def parameter_count(shapes: Iterable[tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes)


def describe_group(entries: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """Tensors, parameters and dtypes of a set of entries (a component of a model)."""
    parameters = parameter_count(shape for _, shape in entries.values())
    return {
        "tensors": len(entries),
        "parameters": parameters,
        "dtype": count_text(dtype for dtype, _ in entries.values()) if entries else None,
    }
