"""Run config files: do they validate, and how do they differ from the defaults and their preset?

Validation is `load_config`'s, with paths checked, so `inspect` and `train` agree on what is wrong.
The differences are computed on the resolved values, so a key set to its default value is not a
difference, and one changed by the preset shows up against the defaults but not against the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onetrainer.inspection.metadata import config_summary
from onetrainer.inspection.result import Inspection
from onetrainer.util.errors import ConfigError, ConfigProblem, UserError


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are values (a concept list differs as a whole)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differences(resolved: Mapping[str, Any], reference: Mapping[str, Any], label: str) -> list[dict[str, Any]]:
    ours, theirs = flatten(resolved), flatten(reference)
    return [
        {"key": key, "value": ours.get(key), label: theirs.get(key)}
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]


def _preset_values(name: str) -> dict[str, Any]:
    from onetrainer.util.config.presets import load_preset
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.config.types import CHECK_PATHS

    data = {**load_preset(name), "preset": name}
    return TrainConfig.model_validate(data, context={CHECK_PATHS: False}).model_dump(mode="json")


def _invalid(path: Path, problems: list[ConfigProblem]) -> Inspection:
    listed = [{"key": problem.path, "message": problem.message} for problem in problems]
    details: dict[str, Any] = {"valid": False, "problems": listed}
    return Inspection("config", "yaml", None, path, f"run config, INVALID: {len(listed)} problem(s)", details)


def inspect_config(path: Path) -> Inspection:
    """Validate as `train --check` does (captions included, for an embedding's placeholder) and compare."""
    from onetrainer.data_loader.placeholders import placeholder_problems
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.config.schema import TrainConfig

    try:
        config = load_config(path)
    except ConfigError as error:
        return _invalid(path, error.problems)
    except UserError as error:
        details = {"valid": False, "problems": [{"key": "", "message": error.message}]}
        return Inspection("config", "yaml", None, path, "run config, INVALID: unreadable", details)
    late = placeholder_problems(config)
    if late:
        return _invalid(path, late)
    resolved = config.model_dump(mode="json")
    details = {
        "valid": True,
        "settings": config_summary(resolved),
        "changed_from_defaults": differences(resolved, TrainConfig().model_dump(mode="json"), "default"),
    }
    if config.preset is not None:
        details["changed_from_preset"] = differences(resolved, _preset_values(config.preset), "preset")
    preset = f" from preset {config.preset}" if config.preset else ""
    summary = f"run config (valid): {config.model.type.value} {config.method.value}{preset}"
    return Inspection("config", "yaml", config.model.type.value, path, summary, details)
