"""Finding and reading the shipped training presets.

Presets live in `presets/` at the repository root; the wheel carries the same files inside the
package as `onetrainer/presets/`, so both an editable and a regular install find them.

A *memory preset* states the GPU it is made for: its name ends in `-<N>gb` (`<family>-lora-8gb`) and its
description says "on an N GB GPU". Its settings are chosen so that `train --dry-run`'s estimate of the
peak memory stays within N GiB (a test holds every memory preset to that).
"""

from __future__ import annotations

import re
from pathlib import Path

from onetrainer.util.config.yaml_text import parse_yaml_mapping
from onetrainer.util.errors import ConfigError, ConfigProblem
from onetrainer.util.suggest import did_you_mean

_PACKAGE_DIR = Path(__file__).resolve().parents[2]


def presets_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "presets", _PACKAGE_DIR.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the presets folder is missing from this installation")


def preset_names() -> list[str]:
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


_BUDGET = re.compile(r"-(\d+)gb$")


def memory_budget(name: str) -> int | None:
    """The GPU memory (GiB) a memory preset is made for, from its name; None for other presets."""
    match = _BUDGET.search(name)
    return int(match.group(1)) if match else None


def memory_presets() -> list[str]:
    return [name for name in preset_names() if memory_budget(name) is not None]


def memory_presets_for(model_type: str) -> list[str]:
    """The memory presets of one model type, the smallest budget first."""
    names = [name for name in memory_presets() if load_preset(name)["model"]["type"] == model_type]
    return sorted(names, key=lambda name: (memory_budget(name) or 0, name))


def preset_path(name: str) -> Path:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = preset_names()
        suggestion = did_you_mean(name, names)
        raise ConfigError(
            [ConfigProblem("preset", f"unknown preset; {suggestion}valid: {', '.join(names)}", name, has_value=True)],
            hint="`onetrainer presets` lists the presets with a description each.",
        )
    return path


def preset_text(name: str) -> str:
    return preset_path(name).read_text(encoding="utf-8")


def preset_description(name: str) -> str:
    """The preset's opening comment up to its first full stop: by convention its first sentence describes
    it, and may wrap onto a second comment line."""
    words: list[str] = []
    for line in preset_text(name).splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        words.append(stripped.lstrip("#").strip())
        if stripped.endswith("."):
            break
    return " ".join(words)


def load_preset(name: str) -> dict:
    path = preset_path(name)
    return parse_yaml_mapping(path.read_bytes(), where=str(path))
