"""What a folder tool reports while it runs and when it is done.

Library code never prints: the runner calls a callback after every batch with a `ToolProgress`, and
returns a `ToolSummary` that the command renders. Both are plain data so tests can assert on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ToolProgress:
    done: int
    """Images handled so far (written or failed)."""
    total: int
    """Images this run has to handle (those the mode skips are not counted)."""
    current: Path | None = None


ProgressCallback = Callable[[ToolProgress], None]


def no_progress(_: ToolProgress) -> None:
    """The default callback for library callers that do not show progress."""


@dataclass
class ToolSummary:
    found: int = 0
    """Images found in the folder."""
    written: list[Path] = field(default_factory=list)
    """Sidecar files written."""
    kept: list[Path] = field(default_factory=list)
    """Images whose existing sidecar the mode kept (fill)."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Images that could not be handled (unreadable, their output unwritable, or sharing it with another image),
    with the reason."""
    empty: list[Path] = field(default_factory=list)
    """Sidecars written with nothing in them: masks where the model found nothing to mask."""
    processed: int = 0
    """Images the run went through (written or failed in it), which the speed counts: not those skipped
    before it started."""
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def count_rows(self, *, written: str, kept: str, empty: str = "empty") -> list[tuple[str, str]]:
        """(label, value) rows for a summary table; `written`/`kept`/`empty` name what this tool does."""
        rows = [
            ("images found", str(self.found)),
            (written, str(len(self.written))),
            (kept, str(len(self.kept))),
            ("skipped", str(len(self.failed))),
        ]
        if self.empty:
            rows.append((empty, str(len(self.empty))))
        if self.processed:
            rows.append(("speed", f"{self.images_per_second:.2f} images/s ({self.seconds:.1f} s)"))
        return rows

    def failure_rows(self, root: Path) -> list[tuple[str, str]]:
        """(path relative to `root`, reason) for every image that could not be handled."""
        return [(_relative(path, root), reason) for path, reason in self.failed]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
