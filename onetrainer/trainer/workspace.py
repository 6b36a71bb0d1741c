"""The run's workspace folder and what lives where in it.

A workspace holds one run. A new run in a workspace where an earlier one left its records
(`metrics.jsonl`, TensorBoard logs, previews, intermediate saves) would append to, overwrite and
interleave with them: one metrics log with two step 1s, one TensorBoard run with two curves. Those
records are not deleted either (they may be all that is left of that run): when the new run starts
training, `archive_earlier_run` moves them, with that run's config, into `earlier-runs/<time>/`,
where TensorBoard shows them as a separate run. Backups are different: they mean the earlier run can
be continued, so a fresh run refuses them (see `start.open_backup`). The data cache is shared by
design and stays.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

RUN_RECORDS = ("metrics.jsonl", "tensorboard", "samples", "saves")
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
        target = self.earlier_runs / started
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.earlier_runs / f"{started}-{suffix}"
        target.mkdir(parents=True)
        for path in records:
            os.replace(path, target / path.name)
        return target
