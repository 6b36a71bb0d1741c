"""The run's workspace folder and what lives where in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
