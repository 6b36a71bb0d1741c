"""The one shape every inspected thing takes: what it is (kind, format, model type) and its details."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onetrainer.util.safetensors_meta import DTYPE_NAMES


@dataclass
class Inspection:
    kind: str
    """model, lora, embedding, backup, workspace, config or images."""
    format: str | None
    model_type: str | None
    path: Path
    summary: str
    """One line for people: what this is, in words."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-ready facts, in the order they are shown."""
    json_only: frozenset[str] = frozenset()
    """Detail keys too long for the terminal view (a whole config, every module name)."""
    view: Any = None
    """A rich renderable shown instead of the generic details view (the dataset report has its own)."""

    @property
    def invalid(self) -> bool:
        """A run config that fails validation: reported in full, and an exit code 2 for scripts."""
        return self.details.get("valid") is False

    def to_dict(self) -> dict[str, Any]:
        head = {
            "kind": self.kind,
            "format": self.format,
            "model_type": self.model_type,
            "path": str(self.path),
            "summary": self.summary,
        }
        return {**head, **self.details}


def dtype_name(code: str) -> str:
    return DTYPE_NAMES.get(code, code.lower())


def count_text(values: Iterable[Any]) -> str:
    """`4` when all equal, else `4 (120), 8 (2)`: most common first."""
    counts = Counter(values)
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{value} ({count})" for value, count in counts.most_common())


def human_count(number: int) -> str:
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if number >= limit:
            return f"{number / limit:.2f}{suffix}"
    return str(number)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
