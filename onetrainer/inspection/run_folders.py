"""Training backups (`backups/step-NNNNNNNN/`) and whole run workspaces.

A backup is described from its `meta.json`, its `config.yaml` and its weights file's header; the
optimizer state (`state.pt`) is a pickle and is only sized, never opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from onetrainer.inspection.metadata import config_summary
from onetrainer.inspection.result import Inspection, human_bytes, human_count
from onetrainer.inspection.tensors import describe_group, read_index
from onetrainer.trainer.backup import BACKUP_FORMAT, CONFIG_FILE, META_FILE, STATE_FILE, WEIGHTS_FILE, list_backups


def backup_meta(path: Path) -> dict[str, Any] | None:
    """The backup's meta.json when `path` is a complete backup of the format we write, else None."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == BACKUP_FORMAT else None


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
    saves = path / "saves"
    details: dict[str, Any] = {
        "settings": config_summary(config),
        "backups": backups,
        "saves": sorted(child.name for child in saves.iterdir()) if saves.is_dir() else [],
        "config": config,
    }
    latest = f", latest backup at step {backups[-1]['step']}" if backups else ", no backups"
    summary = f"training workspace{latest}"
    kind = "workspace"
    return Inspection(
        kind, f"onetrainer-{kind}", _model_type(config), path, summary, details, json_only=frozenset({"config"})
    )
