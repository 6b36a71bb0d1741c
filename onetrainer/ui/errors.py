"""Render an error as one short panel: what went wrong, where, and how to fix it."""

from __future__ import annotations

from rich.panel import Panel
from rich.text import Text

from onetrainer.ui.console import stderr
from onetrainer.util.errors import ConfigError, OneTrainerError


def render_error(error: OneTrainerError) -> None:
    body = Text()
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        body.append(f"{len(error.problems)} problems:\n", style="bold")
        for problem in error.problems:
            body.append(f"  • {problem}\n")
        body.rstrip()
    else:
        body.append(error.message)
    if error.where:
        body.append("\nwhere: ", style="bold").append(error.where)
    if error.hint:
        body.append("\nhow to fix: ", style="bold").append(error.hint)
    stderr.print(Panel(body, title=f"[bold red]{error.title}[/]", title_align="left", border_style="red", expand=False))


def render_unexpected(error: BaseException) -> None:
    body = Text(f"{type(error).__name__}: {error}")
    body.append("\nRun again with --debug for the full traceback.", style="dim")
    stderr.print(
        Panel(body, title="[bold red]Unexpected error[/]", title_align="left", border_style="red", expand=False)
    )
