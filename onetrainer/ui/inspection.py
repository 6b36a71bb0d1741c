"""Terminal view of an inspection: a headline, a table of facts, then one table per structured detail.

It renders any object with `summary`, `to_dict()`, `json_only` and `view` (see
`onetrainer/inspection/result.py`) without importing it, so `ui/` stays below the packages it shows.
Long values are cut for the terminal; `--json` always has everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

MAX_ROWS = 40
MAX_TEXT = 160
HEAD_KEYS = ("kind", "format", "model_type", "path")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return f"({len(value)} keys; see --json)"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        shown = ", ".join(_text(item) for item in value[:10])
        return shown + (f", ... ({len(value) - 10} more)" if len(value) > 10 else "")
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _title(key: str) -> str:
    return key.replace("_", " ")


def _rows_table(title: str | None, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows[:MAX_ROWS]:
        table.add_row(label, _text(value))
    if len(rows) > MAX_ROWS:
        table.add_row("...", f"{len(rows) - MAX_ROWS} more rows (see --json)")
    return table


def _records_table(title: str, records: Sequence[Mapping[str, Any]], first: str | None = None) -> Table:
    columns = ([first] if first else []) + list(dict.fromkeys(key for record in records for key in record))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(_title(column), overflow="fold")
    for record in records[:MAX_ROWS]:
        table.add_row(*(_text(record.get(column)) for column in columns))
    if len(records) > MAX_ROWS:
        table.add_row(f"... {len(records) - MAX_ROWS} more (see --json)", *[""] * (len(columns) - 1))
    return table


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _is_table_of_records(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(item, Mapping) for item in value.values())


def _structured(key: str, value: Any) -> list[RenderableType]:
    if _is_records(value):
        return [_records_table(_title(key), value)]
    if _is_table_of_records(value):
        if key == "metadata":
            return [_rows_table(f"metadata: {group}", list(items.items())) for group, items in value.items()]
        records = [{"name": name, **item} for name, item in value.items()]
        return [_records_table(_title(key), records)]
    return [_rows_table(_title(key), list(value.items()))]


def inspection_view(inspection: Any) -> RenderableType:
    data = inspection.to_dict()
    head = [(_title(key), data[key]) for key in HEAD_KEYS]
    parts: list[RenderableType] = [Text(inspection.summary, style="bold"), _rows_table(None, head)]
    if inspection.view is not None:
        parts.append(inspection.view)
        return Group(*parts)
    facts: list[tuple[str, Any]] = []
    tables: list[RenderableType] = []
    for key, value in data.items():
        if key in (*HEAD_KEYS, "summary") or key in inspection.json_only or value is None:
            continue
        if (isinstance(value, Mapping) and value) or _is_records(value):
            tables.extend(_structured(key, value))
        else:
            facts.append((_title(key), value if value != [] and value != {} else "none"))
    if facts:
        parts.append(_rows_table(None, facts))
    parts.extend(tables)
    return Group(*parts)
