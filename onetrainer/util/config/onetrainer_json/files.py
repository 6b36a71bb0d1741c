"""Reading OneTrainer's JSON files: the training config and the concept and sample lists it names."""

from __future__ import annotations

import json
from pathlib import Path, PureWindowsPath
from typing import Any

from onetrainer.util.config.onetrainer_json.target import SECTION_ORDER
from onetrainer.util.config.yaml_text import InvalidUtf8, decode_utf8
from onetrainer.util.errors import ConfigError, ConfigProblem, UserError

ONETRAINER_KEYS = ("__version", "training_method", "model_type", "base_model_name")
"""Top-level keys that only a OneTrainer config has (our run configs have none of them)."""


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}", hint="Check the path.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the {what}: {exc.strerror or exc}", where=str(path)) from None
    text = decode_utf8(raw)
    if isinstance(text, InvalidUtf8):
        raise ConfigError([ConfigProblem("", str(text))], where=f"{path}:{text.line}:{text.column}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [ConfigProblem("", f"invalid JSON: {exc.msg}")], where=f"{path}:{exc.lineno}:{exc.colno}"
        ) from None


def read_config(path: Path) -> dict[str, Any]:
    data = _read_json(path, "OneTrainer config")
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigProblem("", f"a OneTrainer config is one JSON object, not {type(data).__name__}")], where=str(path)
        )
    return data


def read_list(path: Path, what: str) -> list[Any]:
    data = _read_json(path, what)
    if not isinstance(data, list):
        raise ConfigError(
            [ConfigProblem("", f"a {what} holds a JSON list, not {type(data).__name__}")], where=str(path)
        )
    return data


def find_list_file(name: str, config_dir: Path) -> Path | None:
    """A concept or sample file named in a config: beside the config first, then from the working folder; a
    folder of that name where there is no such file, for the caller to refuse (None: neither is there).

    OneTrainer resolves these names from its own folder (where it is started); a config exported to
    another machine usually travels with its lists beside it. A relative name written on Windows
    (`training_concepts\\concepts.json`) is one file name elsewhere, so it is tried again split at its
    backslashes.
    """
    candidates = _candidates(Path(name).expanduser(), config_dir)
    windows = PureWindowsPath(name)
    if "\\" in name and not windows.anchor:
        candidates += _candidates(Path(*windows.parts), config_dir)
    return next((candidate for candidate in candidates if candidate.is_file()), None) or next(
        (candidate for candidate in candidates if candidate.is_dir()), None
    )


def _candidates(path: Path, config_dir: Path) -> list[Path]:
    return [path] if path.is_absolute() else [config_dir / path, Path.cwd() / path]


def is_onetrainer_config(path: Path) -> bool:
    """Whether `path` holds a OneTrainer JSON config rather than one of our run configs.

    Our run configs are YAML, of which JSON is a subset, so the suffix alone does not decide: a JSON
    object with OneTrainer's keys (`model_type`, `__version`, ...) is OneTrainer's; else one with our
    sections (`model`, `training`, ...) is ours; any other `.json` file is OneTrainer's (its reader
    then reports what is wrong).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError:
        return False
    if path.suffix.lower() != ".json" and not text.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return path.suffix.lower() == ".json"
    if not isinstance(data, dict):
        return path.suffix.lower() == ".json"
    if any(key in data for key in ONETRAINER_KEYS):
        return True
    return path.suffix.lower() == ".json" and not any(key in data for key in SECTION_ORDER)
