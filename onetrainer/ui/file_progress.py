"""Progress and summary for the file tools (`caption`, `mask`, `sample`, `convert`): bars, then a table.

The library reports through a callback; the command adapts it to `file_progress`'s `update(done,
total)`, so this module knows nothing above `ui/`. Output goes to stderr, keeping stdout for scripts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from onetrainer.ui.console import stderr


class _PerSecond(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextlib.contextmanager
def file_progress(description: str, *, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """Yield `update(done, total)` driving one progress bar; the bar is removed when the block ends."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _PerSecond(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, total=total, completed=done)

    with progress:
        yield update


@contextlib.contextmanager
def per_file_progress(unit: str) -> Iterator[Callable[[str, int, int], None]]:
    """Yield `update(name, done, total)`: a transient bar per output file (shown on a terminal only)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done, total=total)

    with progress:
        yield update


def summary_table(counts: list[tuple[str, str]], failures: list[tuple[str, str]]) -> Table:
    """Counts first (label, value), then every skipped file with its reason."""
    table = Table(show_header=False, show_edge=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in counts:
        table.add_row(label, value)
    for path, reason in failures:
        table.add_row(Text("skipped", style="yellow"), f"{path}: {reason}")
    return table
