"""Accounting for every OneTrainer setting: read and mapped, refused with a reason, or noted.

A OneTrainer config has about 160 top-level settings, 13 part objects and 103 optimizer fields; the
mappers handle those we support. So that nothing is dropped without a word, every read goes through a
`View`, which records the key path, and `leftovers` then walks the whole file: a setting that no
mapper read and that differs from OneTrainer's default is reported as unsupported. A setting left at
its default is not "used", so it is never reported.

Two kinds of finding: *unsupported* (a setting we cannot honour: `train` refuses the config unless
`--allow-unsupported`) and *notes* (a setting that changes nothing here, e.g. one OneTrainer itself
ignores in this combination, or an approximation worth knowing about).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SILENT_KEYS = frozenset({"__version", "uuid", "concept_stats"})
"""Bookkeeping, not settings: never reported."""


@dataclass(frozen=True)
class Finding:
    """One OneTrainer setting (dotted key path, with list indices) and why it is reported."""

    key: str
    value: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: {self.why}"


@dataclass
class Ledger:
    """What was read, and what was found, across one import."""

    read: set[str] = field(default_factory=set)
    unsupported: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    def refuse(self, key: str, value: Any, why: str) -> None:
        if not any(item.key == key for item in self.unsupported):
            self.unsupported.append(Finding(key, value, why))

    def note(self, key: str, value: Any, why: str) -> None:
        if not any(item.key == key for item in self.notes):
            self.notes.append(Finding(key, value, why))


def same(value: Any, default: Any) -> bool:
    """Equal as OneTrainer would store them (1 == 1.0; nan never differs from nan)."""
    if isinstance(value, float) and isinstance(default, float) and math.isnan(value) and math.isnan(default):
        return True
    return bool(value == default)


class View:
    """A OneTrainer object (after migration and overlay) and its defaults; every read is recorded."""

    def __init__(self, data: Mapping[str, Any], defaults: Mapping[str, Any], ledger: Ledger, prefix: str = "") -> None:
        self.data = data
        self.defaults = defaults
        self.ledger = ledger
        self.prefix = prefix

    def path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def __getitem__(self, key: str) -> Any:
        self.ledger.read.add(self.path(key))
        return self.data.get(key, self.defaults.get(key))

    def is_default(self, key: str) -> bool:
        return same(self.data.get(key, self.defaults.get(key)), self.defaults.get(key))

    def child(self, key: str, defaults: Mapping[str, Any] | None = None) -> View:
        value = self.data.get(key)
        return View(
            value if isinstance(value, Mapping) else {},
            defaults if defaults is not None else self.defaults.get(key) or {},
            self.ledger,
            f"{self.prefix}{key}.",
        )

    def items(self, key: str, defaults: Mapping[str, Any]) -> Iterator[View]:
        """The objects of list `key`, each with the same `defaults` (their own keys are recorded as read); an item
        that is no object is left out (the overlay has refused it)."""
        for index, item in enumerate(self.data.get(key) or []):
            if isinstance(item, Mapping):
                yield View(item, defaults, self.ledger, f"{self.prefix}{key}.{index}.")

    def refuse(self, key: str, why: str) -> Any:
        """Read `key`; a value other than OneTrainer's default is unsupported, for `why`."""
        value = self[key]
        if not self.is_default(key):
            self.ledger.refuse(self.path(key), value, why)
        return value

    def unsupported(self, key: str, why: str) -> None:
        """`key`'s value (whatever it is) cannot be honoured, for `why`."""
        self.ledger.refuse(self.path(key), self[key], why)

    def ignore(self, key: str, why: str) -> Any:
        """Read `key`; a value other than the default changes nothing, for `why` (a note)."""
        value = self[key]
        if not self.is_default(key):
            self.ledger.note(self.path(key), value, why)
        return value

    def note(self, key: str, why: str) -> None:
        self.ledger.note(self.path(key), self[key], why)

    def skip(self, *keys: str) -> None:
        """Bookkeeping or settings of something switched off (a whole object, too): never reported."""
        for key in keys:
            self.ledger.read.add(self.path(key))


GENERIC_REASON = "onetrainer has no such setting"
LACKING = "OneTrainer has no such setting"
"""The export's reason for a setting of ours without a place in OneTrainer's config."""


def leftovers(
    view: View,
    list_defaults: Mapping[str, Mapping[str, Any]],
    reasons: Mapping[str, str],
    fallback: str = GENERIC_REASON,
) -> None:
    """Report every setting under `view` that no mapper read and that differs from its default.

    `list_defaults` gives the item defaults of lists of objects by key name (concepts, samples);
    `reasons` explains the unsupported settings we know of, by key name (the last path segment),
    and `fallback` the others.
    """
    ledger = view.ledger
    for key, value in view.data.items():
        path = view.path(key)
        if key in SILENT_KEYS or path in ledger.read:
            continue
        default = view.defaults.get(key)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            leftovers(view.child(key), list_defaults, reasons, fallback)
        elif isinstance(value, list) and key in list_defaults:
            for item in view.items(key, list_defaults[key]):
                leftovers(item, list_defaults, reasons, fallback)
        elif key in view.defaults and not same(value, default):
            ledger.refuse(path, value, reasons.get(key, fallback))
