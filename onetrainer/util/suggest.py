"""'Did you mean ...?' for misspelled names: keys, presets, formats, schedulers; and choices said in words."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.replace("-", "_").split("_") if word)


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option the user most likely meant: a close spelling, or an abbreviation like `lr`."""
    choices = list(options)
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if match:
        return match[0]
    lowered = name.lower()
    for choice in choices:
        if len(lowered) > 1 and _initials(choice).lower() == lowered:
            return choice
    return None


def did_you_mean(name: str, options: Iterable[str], *, prefix: str = "") -> str:
    """A ready-to-append phrase, empty when nothing is close."""
    match = closest(name, options)
    return f"did you mean '{prefix}{match}'? " if match else ""


def either(words: list[str]) -> str:
    """`a`, `a or b`, `a, b or c`: the valid choices, as a message says them."""
    return " or ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else words[0]
