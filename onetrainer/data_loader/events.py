"""How the data loader tells its caller what is happening, without printing.

Library code never prints: long passes (scanning, hashing, caching) report progress, and skipped
files report a warning line, through one callback that `ui/` renders (or a test collects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LoaderEvent:
    kind: Literal["progress", "warning"]
    stage: str
    """scan, hash, cache-images, cache-text, prune, or config (a setting that will have no effect)."""
    done: int = 0
    total: int = 0
    message: str = ""


ProgressCallback = Callable[[LoaderEvent], None]


def ignore_events(_: LoaderEvent) -> None:
    """The default callback for callers that show nothing."""
