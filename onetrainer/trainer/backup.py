"""Backups: everything needed to continue a run bit-exactly, one folder per optimizer step.

A backup folder `backups/step-00000123/` holds:
- `trainable.safetensors`: the trained weights (LoRA factors, embedding vectors or the full model),
- `state.pt`: optimizer, scheduler, EMA, grad scaler, RNG states and loop/data position (tensors and
  plain values only, read back with `weights_only=True`),
- `config.yaml`: the resolved config of the run, to check a resume against,
- `meta.json`: format version, step, epoch and the number of ranks that trained it; written last, so its
  presence marks a complete backup.

A sharded run (FSDP) has no rank that holds all the trained weights: its backup keeps them, with the
optimizer's state and the moving average, in `shards/` instead, a `torch.distributed.checkpoint` folder
each rank writes its own part of (see `trainer.sharding`), and `state.pt` holds the rest.

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
from onetrainer.util.atomic import atomic_directory, atomic_path, atomic_write_text, save_safetensors
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

BACKUP_FORMAT = 1
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
SHARDS_FOLDER = "shards"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Backup:
    path: Path
    step: int
    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config_yaml: str
    world_size: int = 1
    """How many ranks trained it (a run continues with as many)."""
    sharded: bool = False
    """Whether the trained tensors are in `shards/` (FSDP) rather than in `weights`."""


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
    world_size: int = 1,
) -> Path:
    """Write the backup of optimizer step `step` atomically and return its folder."""
    target = directory / backup_name(step)
    with atomic_directory(target, overwrite=True) as tmp:
        save_safetensors(weights, tmp / WEIGHTS_FILE)
        write_backup_files(tmp, step=step, epoch=epoch, state=state, config_yaml=config_yaml, world_size=world_size)
    return target


def write_backup_files(
    folder: Path,
    *,
    step: int,
    epoch: int,
    state: dict[str, Any],
    config_yaml: str,
    world_size: int,
    sharded: bool = False,
) -> None:
    """Everything of a backup but its trained tensors, into the (temporary) backup folder; `meta.json` last."""
    import torch

    with atomic_path(folder / STATE_FILE) as written:
        # torch writes the file itself: written through a Python file object, a second Ctrl-C inside its zip
        # writer's callback became a RuntimeError (exit 1, and an emergency backup the user did not want)
        torch.save(state, str(written))
    atomic_write_text(folder / CONFIG_FILE, config_yaml)
    meta: dict[str, Any] = {"format": BACKUP_FORMAT, "step": step, "epoch": epoch, "onetrainer": __version__}
    if world_size > 1:
        meta.update(world_size=world_size, sharded=sharded)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")


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


def backup_world_size(path: Path) -> int:
    """How many ranks trained the backup in `path` (1 when it says nothing: older backups were single-process)."""
    meta = _read_meta(path) or {}
    return int(meta.get("world_size", 1))


def read_backup(path: Path) -> Backup:
    import torch
    from safetensors.torch import load_file

    meta = _read_meta(path)
    if meta is None:
        raise UserError(f"not a complete backup (no readable {META_FILE}): {path}")
    from safetensors import SafetensorError

    from onetrainer.util.detect import refused_pickle

    sharded = bool(meta.get("sharded", False))
    damaged = "Resume from another backup (`--resume backups/step-NNNNNNNN`); this one is damaged."
    try:
        step, epoch, world_size = int(meta["step"]), int(meta["epoch"]), int(meta.get("world_size", 1))
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"the backup's {META_FILE} is damaged ({error!r})", where=str(path), hint=damaged) from None
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        weights = {} if sharded else load_file(path / WEIGHTS_FILE)
        config_yaml = (path / CONFIG_FILE).read_text(encoding="utf-8")
    except pickle.UnpicklingError as error:
        raise refused_pickle(path / STATE_FILE, error) from None
    except (OSError, RuntimeError, SafetensorError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise UserError(f"the backup cannot be read: {error}", where=str(path), hint=damaged) from None
    return Backup(
        path=path,
        step=step,
        epoch=epoch,
        weights=weights,
        state=state,
        config_yaml=config_yaml,
        world_size=world_size,
        sharded=sharded,
    )
