"""May this config continue that backup? Refuse changes to what is trained; allow harmless ones.

A resumed run restores the optimizer's learning rates, the data plan's position and the trained
tensors from the backup, so a changed learning rate, dataset, model or adapter shape would either be
silently ignored or break the continuation. Those are refused, listing every differing key. What
only affects when and where things are written (cadences, outputs, logs) may change freely, and so
may the run's length (epochs, max_steps), to extend a finished run.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.types import CHECK_PATHS
from onetrainer.util.errors import ConfigProblem, UserError

HARMLESS_KEYS: tuple[str, ...] = (
    "preset",
    "workspace",
    "sampling",
    "saving",
    "logging",
    "training.epochs",
    "training.max_steps",
    "training.device",
    "training.threads",
    "training.ema.for_samples",
    "training.ema.for_saves",
    "data.workers",
)
"""Dotted keys (and everything below them) that may differ between a backup and the resuming config."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    if isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}.{index}"))
        return flat or {prefix: []}
    return {prefix: value}


def _harmless(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in HARMLESS_KEYS)


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[ConfigProblem]:
    """The keys whose values differ and matter, each with its backup value and the new one."""
    old = _flatten(saved)
    new = _flatten(current)
    problems = []
    for key in sorted(set(old) | set(new)):
        if _harmless(key) or old.get(key) == new.get(key):
            continue
        was = old.get(key, "(absent)")
        now = new.get(key, "(absent)")
        problems.append(ConfigProblem(key, f"was {was!r} in the backup, now {now!r}"))
    return problems


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The backup's config with keys added since it was written at their defaults (which is what it
    trained with), so a newer version can continue an older backup; as written if it no longer validates."""
    try:
        return TrainConfig.model_validate(saved, context={CHECK_PATHS: False}).model_dump(mode="json")
    except ValidationError:
        return saved


def check_resume_compatible(config: TrainConfig, backup_config_yaml: str, *, where: str) -> None:
    saved = _with_defaults(yaml.safe_load(backup_config_yaml) or {})
    current = config.model_dump(mode="json")
    problems = differing_keys(saved, current)
    if not problems:
        return
    listing = "\n".join(f"  • {problem}" for problem in problems)
    raise UserError(
        f"the config changes what this backup trained, so it cannot continue it:\n{listing}",
        where=where,
        hint="Resume with the original values of these keys, or start a new run in a new workspace. "
        "Cadences, outputs, logging and the run's length may change.",
    )
