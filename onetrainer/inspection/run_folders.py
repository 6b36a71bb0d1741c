"""Training backups (`backups/step-NNNNNNNN/`) and whole run workspaces.

A backup is described from its `meta.json`, its `config.yaml` and its weights file's header; the
optimizer state (`state.pt`) is a pickle and is only sized, never opened. A backup whose `meta.json` is
damaged is named as damaged, with why, never left out: a workspace that seems to hold none invites a new
run into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from onetrainer.inspection.metadata import config_summary
from onetrainer.inspection.result import Inspection, human_bytes, human_count
from onetrainer.inspection.tensors import describe_group, read_index
from onetrainer.trainer.backup import (
    BACKUP_FORMAT,
    CONFIG_FILE,
    META_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    damaged_backup,
    damaged_backups,
    list_backups,
    looks_like_backup,
    read_meta,
)


def backup_meta(path: Path) -> dict[str, Any] | None:
    """The backup's meta.json when `path` is a complete backup of the format we write, else None; a user error
    naming the damage when `path` has a `meta.json` that is unusable."""
    meta, problem = read_meta(path)
    if meta is None and (path / META_FILE).exists() and looks_like_backup(path):
        raise damaged_backup(path, str(problem))
    return meta


def is_workspace(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / "backups").is_dir()


def _config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _model_type(config: dict[str, Any]) -> str | None:
    model = config.get("model")
    return model.get("type") if isinstance(model, dict) else None


def inspect_backup(path: Path, meta: dict[str, Any]) -> Inspection:
    config = _config(path)
    weights = read_index(path / WEIGHTS_FILE) if (path / WEIGHTS_FILE).is_file() else None
    state = path / STATE_FILE
    details: dict[str, Any] = {
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "onetrainer_version": meta.get("onetrainer"),
        "settings": config_summary(config),
        "weights": describe_group(weights.entries) if weights else None,
        "state_size": human_bytes(state.stat().st_size) if state.is_file() else None,
        "config": config,
    }
    trained = f", {human_count(int(details['weights']['parameters']))} trained parameters" if weights else ""
    summary = f"training backup at step {meta.get('step')} (epoch {meta.get('epoch')}){trained}"
    return Inspection(
        "backup",
        f"onetrainer-backup-v{BACKUP_FORMAT}",
        _model_type(config),
        path,
        summary,
        details,
        json_only=frozenset({"config"}),
    )


def inspect_workspace(path: Path) -> Inspection:
    config = _config(path)
    backups = []
    for backup in list_backups(path / "backups"):
        meta = backup_meta(backup) or {}
        backups.append({"name": backup.name, "step": meta.get("step"), "epoch": meta.get("epoch")})
    damaged = [{"name": backup.name, "problem": why} for backup, why in damaged_backups(path / "backups")]
    saves = path / "saves"
    details: dict[str, Any] = {
        "settings": config_summary(config),
        "backups": backups,
        "damaged_backups": damaged,
        "saves": sorted(child.name for child in saves.iterdir()) if saves.is_dir() else [],
        "config": config,
    }
    latest = f", latest backup at step {backups[-1]['step']}" if backups else ""
    latest = latest or (", no complete backup" if damaged else ", no backups")
    broken = f", {len(damaged)} damaged backup{'s' if len(damaged) != 1 else ''}" if damaged else ""
    summary = f"training workspace{latest}{broken}"
    kind = "workspace"
    return Inspection(
        kind, f"onetrainer-{kind}", _model_type(config), path, summary, details, json_only=frozenset({"config"})
    )
