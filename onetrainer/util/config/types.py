"""Reusable field types: paths that must exist, model sources, and training cadences."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

CHECK_PATHS = "check_paths"
"""Validation-context flag: when false, existence checks are skipped (e.g. for printing a preset)."""


def _checks_paths(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(CHECK_PATHS, True))


def _existing_path(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError("expected a path to an existing file or folder")
    path = Path(value).expanduser()
    if _checks_paths(info) and not path.exists():
        raise ValueError(f"path does not exist: {path}")
    return path


def _existing_dir(value: object, info: ValidationInfo) -> Path:
    path = _existing_path(value, info)
    if _checks_paths(info) and not path.is_dir():
        raise ValueError(f"expected a folder, but this is a file: {path}")
    return path


def _plain_path(value: object) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ValueError("expected a path")
    return Path(value).expanduser()


_path_serializer = PlainSerializer(lambda p: str(p), return_type=str)

ExistingPath = Annotated[Path, BeforeValidator(_existing_path), _path_serializer]
"""A file or folder that must exist when the config is validated."""

ExistingDir = Annotated[Path, BeforeValidator(_existing_dir), _path_serializer]
"""A folder that must exist when the config is validated."""

OutputPath = Annotated[Path, BeforeValidator(_plain_path), _path_serializer]
"""A path the run will create (workspace, output file); `~` is expanded, existence is not required."""

TINY_PREFIX = "tiny:"
"""`tiny:<name>` names a built-in tiny random-weight model of a family (`FamilySpec.tiny`): for the demo and tests."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
"""Endings of the weight files a model source may be."""


def is_hub_id(text: str) -> bool:
    """Whether a source that is no existing path can be a hub id: `org/name`, not shaped like a file path (a
    weights ending, or starting with `/`, `./`, `../`, `~`), which must exist instead."""
    looks_local = text.startswith(("/", "./", "../", "~")) or text.lower().endswith(WEIGHT_SUFFIXES)
    return bool(_HUB_ID.match(text)) and not looks_local


def _model_source(value: object, info: ValidationInfo) -> str:
    """A local diffusers folder or weights file, a Hugging Face hub id (`org/name`), or `tiny:<family>`.

    A local path wins when it exists. Something that can only be a file (it has a weights suffix or
    starts with `/`, `./`, `~`) must exist; anything shaped like `org/name` is accepted as a hub id,
    because whether the hub has it can only be known when loading.
    """
    if not isinstance(value, (str, Path)) or str(value).strip() == "":
        raise ValueError("expected a diffusers folder, a .safetensors/.ckpt file, or a hub id like org/name")
    text = str(value).strip()
    if text.startswith(TINY_PREFIX):
        return text
    path = Path(text).expanduser()
    if path.exists() or not _checks_paths(info):
        return str(path) if text.startswith("~") else text
    if not is_hub_id(text):
        raise ValueError(f"no such file or folder, and not a hub id of the form org/name: {text}")
    return text


ModelSource = Annotated[str, BeforeValidator(_model_source)]


def _checks_headers(info: ValidationInfo) -> bool:
    """Whether to read what a model source is: only when a config is loaded, whose context says so; a loader
    that builds a `ModelConfig` itself detects its source while loading and raises its own errors."""
    return bool((info.context or {}).get(CHECK_PATHS, False))


def _base_source(value: object, info: ValidationInfo) -> str:
    text = _model_source(value, info)
    if _checks_headers(info):
        from onetrainer.util.config.sources import check_base_source

        check_base_source(text)
    return text


def _vae_source(value: object, info: ValidationInfo) -> str:
    text = _model_source(value, info)
    if _checks_headers(info):
        from onetrainer.util.config.sources import check_vae_source

        check_vae_source(text)
    return text


BaseSource = Annotated[str, BeforeValidator(_base_source)]
"""A `ModelSource` that must be a base model: a LoRA, an empty folder or a damaged file is refused from its header."""

VaeSource = Annotated[str, BeforeValidator(_vae_source)]
"""A `ModelSource` that must be a VAE: a tiny model, a folder without a VAE config or a damaged file is refused."""


class CadenceUnit(str, Enum):
    STEP = "step"
    EPOCH = "epoch"
    MINUTE = "minute"
    NEVER = "never"


@dataclass(frozen=True)
class Cadence:
    """How often something recurring happens: every N steps, epochs or minutes, or never."""

    every: float
    unit: CadenceUnit

    def __str__(self) -> str:
        if self.unit is CadenceUnit.NEVER:
            return "never"
        number = int(self.every) if float(self.every).is_integer() else self.every
        plural = "s" if number != 1 else ""
        return f"{number} {self.unit.value}{plural}"


_CADENCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(step|epoch|minute)s?\s*$", re.IGNORECASE)


def _parse_cadence(value: object) -> Cadence:
    if isinstance(value, Cadence):
        return value
    text = str(value).strip().lower()
    if text in ("never", "none", "off", "0"):
        return Cadence(0, CadenceUnit.NEVER)
    match = _CADENCE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError("expected '<N> steps', '<N> epochs', '<N> minutes' or 'never' (e.g. '500 steps')")
    return Cadence(float(match.group(1)), CadenceUnit(match.group(2)))


CadenceField = Annotated[
    Cadence,
    BeforeValidator(_parse_cadence),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string"}),
]
