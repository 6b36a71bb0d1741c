"""Tables printed by commands."""

from __future__ import annotations

from rich.table import Table


def preset_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="Presets", title_justify="left", show_edge=False)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("description")
    for name, description in rows:
        table.add_row(name, description)
    return table
