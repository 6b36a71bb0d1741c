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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer import __version__
from onetrainer.util.atomic import atomic_directory, atomic_path, atomic_write_text, save_safetensors, temp_sibling
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
ZIP_MAGIC = b"PK\x03\x04"
"""How `state.pt` starts: `torch.save` writes a zip archive."""


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


def read_meta(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(`meta.json`, None) when `path` is a complete backup of our format, else (None, why it is not).

    A folder without the file is one whose write never finished; one whose file is unreadable is damaged,
    and must be reported as such: skipped silently, it would hide the run it belongs to.
    """
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"it has no {META_FILE}, so its write never finished"
    except OSError as error:
        return None, f"{META_FILE} cannot be read ({error.strerror or error})"
    except ValueError as error:  # not UTF-8, or not JSON
        return None, f"{META_FILE} is damaged: it is not valid JSON ({error})"
    if not isinstance(meta, dict):
        return None, f"{META_FILE} is damaged: it holds a JSON {type(meta).__name__}, not an object"
    if meta.get("format") != BACKUP_FORMAT:
        return None, f"{META_FILE} says backup format {meta.get('format')!r}; this version reads format {BACKUP_FORMAT}"
    for key, value in (
        ("step", meta.get("step")),
        ("epoch", meta.get("epoch")),
        ("world_size", meta.get("world_size", 1)),
    ):
        if value is None:
            return None, f"{META_FILE} is damaged: it has no {key}"
        try:
            int(value)
        except (TypeError, ValueError):
            return None, f"{META_FILE} is damaged: its {key} is {value!r}, not a whole number"
    return meta, None


def looks_like_backup(path: Path) -> bool:
    """Whether the folder is named as a backup or holds a backup's state: another folder's `meta.json` is not ours."""
    return bool(_NAME.match(path.name)) or (path / STATE_FILE).is_file()


def _read_meta(path: Path) -> dict[str, Any] | None:
    return read_meta(path)[0]


def _backup_folders(directory: Path) -> list[tuple[int, Path]]:
    """The `step-N` folders in `directory`, oldest first (temporary `.step-*` ones left out)."""
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), child) for child in directory.iterdir() if (match := _NAME.match(child.name))]
    return sorted(item for item in found if item[1].is_dir())


def list_backups(directory: Path) -> list[Path]:
    """Complete backups in `directory`, oldest first."""
    return [path for _, path in _backup_folders(directory) if _read_meta(path) is not None]


def damaged_backups(directory: Path) -> list[tuple[Path, str]]:
    """Backup folders in `directory` whose `meta.json` is there but unusable, oldest first, with why."""
    damaged = []
    for _, path in _backup_folders(directory):
        meta, problem = read_meta(path)
        if meta is None and (path / META_FILE).exists():
            damaged.append((path, str(problem)))
    return damaged


def prune_backups(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` backups, and leftovers of interrupted writes."""
    removed = []
    for path in list_backups(directory)[:-keep_last] if keep_last > 0 else []:
        aside = temp_sibling(path, ".old")  # (a name the next run's sweep of stale temporaries knows)
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
    """Resolve `--resume`: `last` (the newest in this run's workspace), a backup folder or a workspace.

    A damaged backup is refused by name, never skipped: resuming an older one instead would silently
    drop the steps the damaged one held.
    """
    if str(spec) == "last":
        return _newest(workspace_backups)
    path = Path(spec).expanduser()
    if (path / META_FILE).exists():
        problem = read_meta(path)[1]
        if problem is not None:
            raise damaged_backup(path, problem)
        return path
    for nested in (path / "backups", path):
        if list_backups(nested) or damaged_backups(nested):
            return _newest(nested)
    raise UserError(
        f"not a backup folder, nor a workspace with backups: {path}",
        hint="Pass `--resume last`, a `backups/step-NNNNNNNN` folder, or a run's workspace folder.",
    )


def _newest(directory: Path) -> Path:
    """The newest backup in `directory`; a user error when there is none, or when the newest is damaged."""
    complete = list_backups(directory)
    newest = complete[-1] if complete else None
    damaged = [
        (path, why)
        for path, why in damaged_backups(directory)
        if newest is None or backup_step(path) > backup_step(newest)
    ]
    if damaged:
        path, why = damaged[-1]
        raise damaged_backup(path, why, earlier=newest, only=newest is None)
    if newest is None:
        raise UserError(
            f"no backup to resume from in {directory}",
            hint="Backups are written on the `saving.backup_every` cadence and when a run is interrupted.",
        )
    return newest


def damaged_backup(
    path: Path, problem: str, *, earlier: Path | None = None, only: bool = False, file: str = META_FILE
) -> UserError:
    """The refusal of the damaged backup `path` (its `file` is what is wrong); `earlier`: the newest complete
    backup before it, `only`: every backup in its folder is damaged."""
    if only:
        what = f"no backup to resume from in {path.parent}: every backup there is damaged; the newest, {path.name},"
    else:
        what = f"the {'newest ' if earlier is not None else ''}backup {path.name}"
    if earlier is not None:
        hint = f"Resume from the newest complete one, `--resume {shlex.quote(str(earlier))}` (later steps are lost)."
    elif only:
        hint = "No backup there can continue the run: start a new run in its own `workspace=...` folder."
    else:
        hint = "Resume from another backup (`--resume backups/step-NNNNNNNN`), or start a new run in its own workspace."
    return UserError(f"{what} cannot be resumed: {problem}", where=str(path / file), hint=hint)


def backup_world_size(path: Path) -> int:
    """How many ranks trained the backup in `path` (1 when it says nothing: older backups were single-process)."""
    meta = _read_meta(path) or {}
    return int(meta.get("world_size", 1))


def read_backup(path: Path) -> Backup:
    """The backup in `path`; a user error naming the damaged file, or the refused pickle, if it cannot be read."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from onetrainer.trainer.optimizers import optimizer_state_classes
    from onetrainer.util.detect import refused_pickle

    meta, problem = read_meta(path)
    if meta is None:
        raise damaged_backup(path, str(problem))
    problem = _state_problem(path / STATE_FILE)
    if problem is not None:
        raise damaged_backup(path, problem, file=STATE_FILE)
    sharded = bool(meta.get("sharded", False))
    try:
        with torch.serialization.safe_globals(optimizer_state_classes()):
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        weights = {} if sharded else load_file(path / WEIGHTS_FILE)
        config_yaml = (path / CONFIG_FILE).read_text(encoding="utf-8")
    except pickle.UnpicklingError as error:
        raise refused_pickle(path / STATE_FILE, error) from None
    except (OSError, RuntimeError, SafetensorError, UnicodeDecodeError, ValueError, TypeError, EOFError) as error:
        raise UserError(
            f"the backup cannot be read: {error}",
            where=str(path),
            hint="Resume from another backup (`--resume backups/step-NNNNNNNN`); this one is damaged.",
        ) from None
    return Backup(
        path=path,
        step=int(meta["step"]),
        epoch=int(meta["epoch"]),
        weights=weights,
        state=state,
        config_yaml=config_yaml,
        world_size=int(meta.get("world_size", 1)),
        sharded=sharded,
    )


def _state_problem(file: Path) -> str | None:
    """Why `state.pt` is no PyTorch archive, or None. `torch.save` writes a zip archive: a file that is not one
    is damaged, and handing it to the unpickler would only make torch describe its bytes as forbidden code."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        return f"it has no {STATE_FILE}"
    except OSError as error:
        return f"{STATE_FILE} cannot be read ({error.strerror or error})"
    if head != ZIP_MAGIC:
        return f"{STATE_FILE} is damaged: it is not a PyTorch archive (the zip file torch.save writes)"
    return None
