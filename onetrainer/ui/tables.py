"""Tables printed by commands."""

from __future__ import annotations

from typing import Any

from rich.table import Table

GIB = 2**30


def preset_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="Presets", title_justify="left", show_edge=False)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("description")
    for name, description in rows:
        table.add_row(name, description)
    return table


def memory_table(estimate: Any) -> Table:
    """`train --dry-run`'s memory estimate (`model_setup.estimate.MemoryEstimate`): GPU lines, the peak, and
    what waits in CPU memory instead."""
    table = Table(
        title=f"Estimated peak GPU memory: {estimate.peak / GIB:.1f} GiB",
        title_justify="left",
        caption=f"from the shapes of the {estimate.architecture}, before anything loads",
        caption_justify="left",
        show_edge=False,
    )
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column("on the GPU")
    for line in estimate.gpu:
        table.add_row(f"{line.bytes / GIB:.2f}", line.what)
    for line in estimate.cpu:
        table.add_row(f"[dim]{line.bytes / GIB:.2f}[/]", f"[dim]in CPU memory: {line.what}[/]")
    for note in estimate.notes:
        table.add_row("", f"[dim]{note}[/]")
    if estimate.gpu_total is not None:
        size = f"{estimate.gpu_total / GIB:.1f} GiB"
        if estimate.fits:
            table.add_row("", f"[green]fits this GPU's {size}[/]")
        else:
            presets = ", ".join(estimate.fitting_presets) or "none"
            table.add_row("", f"[red]more than this GPU's {size}[/]; this model's memory presets for it: {presets}")
    return table
