"""The run config being written: a nested mapping filled by dotted key paths, in our schema's order."""

from __future__ import annotations

from typing import Any

SECTION_ORDER = (
    "model",
    "method",
    "lora",
    "embedding",
    "data",
    "parts",
    "noise",
    "loss",
    "training",
    "sampling",
    "saving",
    "logging",
    "workspace",
)


class Target:
    """Our run config as plain data (what a YAML file holds), built key by key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def set(self, dotted: str, value: Any) -> None:
        *parents, last = dotted.split(".")
        node = self.data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def ordered(self) -> dict[str, Any]:
        """The sections in the order our presets and `--check` print them."""
        known = {key: self.data[key] for key in SECTION_ORDER if key in self.data}
        return {**known, **{key: value for key, value in self.data.items() if key not in known}}
