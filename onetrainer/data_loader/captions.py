"""Where an image's caption lines come from, before any augmentation: one rule for every reader.

The caption node builds training captions with it, and the placeholder check reads the same lines
without decoding a single image, so the two can never disagree about what a caption says.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from onetrainer.data_loader.files import read_text_lines
from onetrainer.util.config.data import CaptionConfig, CaptionSource, MissingCaption

SOURCE_SETTINGS = ("source", "if_missing", "concept_file", "text", "prefix", "tag_delimiter")
"""The `caption.*` settings that decide an image's caption lines."""


@dataclass(frozen=True)
class CaptionSourceSettings:
    source: CaptionSource
    if_missing: MissingCaption
    concept_file: Path | None
    text: str
    prefix: str
    tag_delimiter: str

    @classmethod
    def of(cls, caption: CaptionConfig) -> CaptionSourceSettings:
        return cls(*(getattr(caption, name) for name in SOURCE_SETTINGS))


@lru_cache(maxsize=64)
def _concept_lines(path: Path, mtime_ns: int) -> tuple[str, ...]:
    return tuple(read_text_lines(path)[0])


def caption_lines(settings: CaptionSourceSettings, image_path: Path, caption_path: Path | None) -> list[str]:
    """The lines one is picked from each time the image is used (never empty; `prefix` applied)."""
    if settings.source is CaptionSource.FILENAME:
        lines = [image_path.stem]
    elif settings.source is CaptionSource.FIXED:
        lines = [settings.text]
    elif settings.source is CaptionSource.CONCEPT_FILE and settings.concept_file is not None:
        path = settings.concept_file
        lines = list(_concept_lines(path, path.stat().st_mtime_ns)) or [""]
    else:
        lines = read_text_lines(caption_path)[0] if caption_path is not None else []
        if not lines:
            lines = [image_path.stem] if settings.if_missing is MissingCaption.FILENAME else [""]
    if not settings.prefix:
        return lines
    return [_prefixed(settings, line) for line in lines]


def _prefixed(settings: CaptionSourceSettings, line: str) -> str:
    """`prefix` before the line; before an empty line, without the delimiter it ends with.

    A prefix is typed to go before tags ("a photo of <sks>, "): alone, its trailing delimiter was
    trained on as a dangling comma, so it is dropped (with the whitespace around it).
    """
    if line.strip():
        return f"{settings.prefix}{line}".strip()
    prefix = settings.prefix.strip()
    delimiter = settings.tag_delimiter.strip()
    if delimiter and prefix.endswith(delimiter):
        prefix = prefix[: -len(delimiter)].rstrip()
    return prefix
