"""Backups: everything needed to continue a run bit-exactly, one folder per optimizer step.

A backup folder `backups/step-00000123/` holds:
- `trainable.safetensors`: the trained weights (LoRA factors, embedding vectors or the full model),
- `state.pt`: optimizer, scheduler, EMA, grad scaler, RNG states and loop/data position (tensors and
  plain values only, read back with `weights_only=True`),
- `config.yaml`: the resolved config of the run, to check a resume against,
- `meta.json`: format version, step and epoch; written last, so its presence marks a complete backup.

The folder is filled under a temporary name and renamed into place in one step, so a crash at any
moment leaves either the previous backups or the new complete one. Rolling deletion renames a folder
aside before deleting it, so a half-deleted backup is never mistaken for a complete one.
"""

from __future__ import annotations

import json
import pickle
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer import __version__
from onetrainer.util.atomic import atomic_directory, atomic_file, atomic_write_text, save_safetensors
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

BACKUP_FORMAT = 1
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Backup:
    path: Path
    step: int
    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config_yaml: str


def backup_name(step: int) -> str:
    return f"step-{step:08d}"


def backup_step(path: Path) -> int:
    """The optimizer step a backup folder holds, from its name."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"not a backup folder name: {path.name}")
    return int(match.group(1))


def resume_command(command: str, backup: Path | None = None) -> str:
    """`command` (a run's command line) continuing from the newest backup, or from `backup`."""
    return f"{command} --resume {shlex.quote(str(backup)) if backup is not None else 'last'}"


def write_backup(
    directory: Path,
    *,
    step: int,
    epoch: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
) -> Path:
    """Write the backup of optimizer step `step` atomically and return its folder."""
    import torch

    target = directory / backup_name(step)
    with atomic_directory(target, overwrite=True) as tmp:
        save_safetensors(weights, tmp / WEIGHTS_FILE)
        with atomic_file(tmp / STATE_FILE) as handle:
            torch.save(state, handle)
        atomic_write_text(tmp / CONFIG_FILE, config_yaml)
        meta = {"format": BACKUP_FORMAT, "step": step, "epoch": epoch, "onetrainer": __version__}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
    return target


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == BACKUP_FORMAT else None


def list_backups(directory: Path) -> list[Path]:
    """Complete backups in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and _read_meta(child) is not None:
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def prune_backups(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` backups, and leftovers of interrupted writes."""
    removed = []
    for path in list_backups(directory)[:-keep_last] if keep_last > 0 else []:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=directory))
        aside.rmdir()
        path.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(path)
    for leftover in directory.glob(".step-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


def find_backup(workspace_backups: Path, spec: str | Path) -> Path:
    """Resolve `--resume`: `last` (the newest in this run's workspace), a backup folder or a workspace."""
    if str(spec) == "last":
        candidates = list_backups(workspace_backups)
        if not candidates:
            raise UserError(
                f"no backup to resume from in {workspace_backups}",
                hint="Backups are written on the `saving.backup_every` cadence and when a run is interrupted.",
            )
        return candidates[-1]
    path = Path(spec).expanduser()
    if _read_meta(path) is not None:
        return path
    for nested in (path / "backups", path):
        candidates = list_backups(nested)
        if candidates:
            return candidates[-1]
    raise UserError(
        f"not a backup folder, nor a workspace with backups: {path}",
        hint="Pass `--resume last`, a `backups/step-NNNNNNNN` folder, or a run's workspace folder.",
    )


def read_backup(path: Path) -> Backup:
    import torch
    from safetensors.torch import load_file

    meta = _read_meta(path)
    if meta is None:
        raise UserError(f"not a complete backup (no readable {META_FILE}): {path}")
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        weights = load_file(path / WEIGHTS_FILE)
        config_yaml = (path / CONFIG_FILE).read_text(encoding="utf-8")
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        raise UserError(f"the backup cannot be read: {error}", where=str(path)) from None
    return Backup(
        path=path,
        step=int(meta["step"]),
        epoch=int(meta["epoch"]),
        weights=weights,
        state=state,
        config_yaml=config_yaml,
    )
