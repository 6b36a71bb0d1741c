"""The run's workspace folder and what lives where in it.

A workspace holds one run. A new run in a workspace where an earlier one left its records
(`metrics.jsonl`, TensorBoard logs, previews, intermediate saves) would append to, overwrite and
interleave with them: one metrics log with two step 1s, one TensorBoard run with two curves. Those
records are not deleted either (they may be all that is left of that run): when the new run starts
training, `archive_earlier_run` moves them, with that run's config, into `earlier-runs/<time>/`,
where TensorBoard shows them as a separate run. Backups are different: they mean the earlier run can
be continued, so a fresh run refuses them (see `start.open_backup`); a run resumed from an older backup
moves the ones after it aside with those steps' saves and previews (`archive_steps_after`), as the steps it
leaves. The data cache is shared by
design and stays. Two runs at once in one workspace would interleave all of it: `workspace_lock`
refuses the second.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from onetrainer.trainer.backup import backup_step, damaged_backups, list_backups
from onetrainer.util.atomic import process_tag, tagged_process_gone
from onetrainer.util.errors import UserError

RUN_RECORDS = ("metrics.jsonl", "tensorboard", "samples", "saves")
LOCK_FILE = ".lock"
"""Names the process of the run that holds the workspace (`workspace_lock`)."""
"""What a run records in its workspace, besides its config, backups and the shared cache."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def saves(self) -> Path:
        return self.root / "saves"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def earlier_runs(self) -> Path:
        return self.root / "earlier-runs"

    def earlier_run_records(self) -> list[Path]:
        """The records (`RUN_RECORDS`) an earlier run left here, non-empty ones only."""
        found = []
        for name in RUN_RECORDS:
            path = self.root / name
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                found.append(path)
        return found

    def archive_earlier_run(self) -> Path | None:
        """Move an earlier run's records and config into `earlier-runs/<its start time>/`; None if none."""
        records = self.earlier_run_records()
        if not records:
            return None
        if self.config.is_file():
            records.append(self.config)
        started = time.strftime("%Y%m%d-%H%M%S", time.localtime(min(path.stat().st_mtime for path in records)))
        target = self._new_earlier_run(started)
        for path in records:
            os.replace(path, target / path.name)
        return target

    def archive_steps_after(self, resumed: Path) -> Path | None:
        """Move what this workspace holds of the steps after `resumed` (and, when `resumed` lies elsewhere, of
        its step) into `earlier-runs/<time>-after-step-N/`: backups, intermediate saves and previews, which
        would otherwise lie beside the resumed run's own as if it had made them (the way on after a divergence
        is an earlier backup with other settings). None if there are none. Damaged backups go too: left, the
        newest of them would stop this run's `--resume last`."""
        step = backup_step(resumed)
        first = step + 1 if resumed.parent.resolve() == self.backups.resolve() else step
        every = [*list_backups(self.backups), *(path for path, _ in damaged_backups(self.backups))]
        later = {
            self.backups.name: [path for path in every if backup_step(path) >= first],
            self.saves.name: _named_from_step(self.saves, first),
            self.samples.name: _named_from_step(self.samples, first),
        }
        if not any(later.values()):
            return None
        target = self._new_earlier_run(f"{time.strftime('%Y%m%d-%H%M%S')}-after-step-{step}")
        for folder, paths in later.items():
            if paths:
                (target / folder).mkdir()
            for path in paths:
                os.replace(path, target / folder / path.name)
        return target

    def _new_earlier_run(self, name: str) -> Path:
        target = self.earlier_runs / name
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.earlier_runs / f"{name}-{suffix}"
        target.mkdir(parents=True)
        return target


_STEP_PREFIX = re.compile(r"step-(\d{8})")
"""How intermediate saves (`step-00000012.safetensors`) and previews (`step-00000012-0.png`) begin."""


def _named_from_step(folder: Path, first: int) -> list[Path]:
    """The entries of `folder` named for step `first` or a later one."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if (match := _STEP_PREFIX.match(path.name)) is not None and int(match.group(1)) >= first
    )


class WorkspaceInUse(UserError):
    """Another run holds the workspace: nothing of it may be touched, not even a folder this run thought new."""


def _held(holder: str, age: float, own: str) -> bool:
    """Whether a lock naming `holder`, written `age` seconds ago, is live. An empty one is being written (by a
    run between creating and filling it) for a few seconds at most; one naming this very process is a lock
    of an earlier run that had the same pid (a container restarted)."""
    if not holder:
        return age < 10
    return holder != own and not tagged_process_gone(holder)


def _read_lock(path: Path) -> tuple[str, float] | None:
    """The lock's holder and age in seconds; None when there is no lock (or it went while being read)."""
    try:
        return path.read_text(encoding="utf-8").strip(), time.time() - path.stat().st_mtime
    except OSError:
        return None


def check_workspace_free(root: Path) -> None:
    """Refuse a workspace another live run holds, before anything else is said of it (its backups, which
    belong to that run, would send the user to `--resume` it)."""
    lock = _read_lock(root / LOCK_FILE)
    if lock is not None and _held(*lock, process_tag()):
        raise _in_use(root, lock[0])


def _in_use(root: Path, holder: str) -> WorkspaceInUse:
    return WorkspaceInUse(
        f"the workspace {root} is in use by another run (process {holder or 'starting'})",
        where="workspace",
        hint=f"Wait for that run to end, or give this one another workspace. If no run uses it (one killed on "
        f"another machine), delete {root / LOCK_FILE}.",
    )


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold the workspace for one run: a `.lock` file naming its process (`util.atomic.process_tag`).

    A lock whose process is gone from this machine (a killed run) is taken over; one of a live process, or of
    another machine's (which cannot be checked from here), refuses the run before anything loads.
    """
    path = root / LOCK_FILE
    root.mkdir(parents=True, exist_ok=True)
    tag = process_tag()
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            lock = _read_lock(path)
            if lock is None:
                continue  # released meanwhile
            if _held(*lock, tag):
                raise _in_use(root, lock[0]) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(tag)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8").strip() == tag:
                path.unlink()
