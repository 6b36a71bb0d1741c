"""The two consoles: results go to stdout (pipeable), messages and progress to stderr."""

from __future__ import annotations

from rich.console import Console

stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, highlight=False)
