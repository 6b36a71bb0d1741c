"""Caption nodes: source lines (see `captions`), pick one, tag dropout, shuffle, dropout, capitalisation.

Each augmentation is its own node with its own random stream (keyed by the text variation), so a
caption's augmentations are reproducible and independent of one another. When no augmentation is
switched on, a caption passes through untouched, whitespace and all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from onetrainer.data_loader.captions import SOURCE_SETTINGS, CaptionSourceSettings, caption_lines
from onetrainer.data_loader.graph import Node, NodeView

TEXT_SOURCES = ("image_path", "caption_path")


def _caption_lines(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    settings = CaptionSourceSettings(*(view.setting(f"caption.{name}") for name in SOURCE_SETTINGS))
    return {"caption.lines": caption_lines(settings, values["image_path"], values["caption_path"])}


def _choose(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    lines = values["caption.lines"]
    return {"caption.chosen": lines[0] if len(lines) == 1 else view.rng().choice(lines)}


def _split(view: NodeView, caption: str) -> tuple[list[str], str]:
    """The caption's tags, and the separator to join them again with: the one the caption uses.

    Tags are stripped, so the spaces around the delimiter must come back from the caption itself: with
    the default delimiter "," a caption written "a, b" stays "a, b", one written "a,b" stays "a,b", and
    "red | blue" with the delimiter "|" stays " | " apart (a space added after a bare delimiter turned
    "red|blue" into "blue| red").
    """
    delimiter = view.setting("caption.tag_delimiter")
    return [tag.strip() for tag in caption.split(delimiter) if tag.strip()], _separator(caption, delimiter)


def _separator(caption: str, delimiter: str) -> str:
    """The delimiter with the whitespace around it most often in the caption (the first on a tie); the
    delimiter as given when the caption has none."""
    found = Counter(re.findall(rf"\s*{re.escape(delimiter)}\s*", caption))
    return found.most_common(1)[0][0] if found else delimiter


def _matches(tag: str, patterns: list[str], regex: bool) -> bool:
    if regex:
        return any(re.fullmatch(pattern, tag) for pattern in patterns)
    return tag in patterns


def _tag_dropout(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    caption = values["caption.chosen"]
    probability = float(view.setting("caption.tag_dropout"))
    if probability == 0:
        return {"caption.tags_dropped": caption}
    tags, joiner = _split(view, caption)
    keep_count = int(view.setting("caption.keep_tags"))
    keep_list = view.setting("caption.tag_dropout_keep")
    only_list = view.setting("caption.tag_dropout_only")
    regex = bool(view.setting("caption.tag_dropout_regex"))
    rng = view.rng()
    kept = tags[:keep_count]
    for tag in tags[keep_count:]:
        droppable = not _matches(tag, keep_list, regex) and (not only_list or _matches(tag, only_list, regex))
        if not (droppable and rng.random() < probability):
            kept.append(tag)
    return {"caption.tags_dropped": joiner.join(kept)}


def _shuffle_tags(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    caption = values["caption.tags_dropped"]
    if not view.setting("caption.shuffle_tags"):
        return {"caption.shuffled": caption}
    tags, joiner = _split(view, caption)
    keep_count = int(view.setting("caption.keep_tags"))
    tail = tags[keep_count:]
    view.rng().shuffle(tail)
    return {"caption.shuffled": joiner.join(tags[:keep_count] + tail)}


_STYLES = (str.lower, str.upper, str.title, lambda text: text[:1].upper() + text[1:].lower())

_PLACEHOLDER = re.compile(r"<[^<>]+>")
"""An embedding placeholder as captions write them (`<sks>`; the default is `<embedding>`)."""


def _capitalize(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    caption = values["caption.shuffled"]
    rng = view.rng()
    if rng.random() < float(view.setting("caption.random_capitalization")):
        caption = _restyle(caption, rng.choice(_STYLES))
    return {"caption": caption}


def _restyle(caption: str, style: Callable[[str], str]) -> str:
    """`style` applied around every `<...>` span, which is kept as written.

    Embedding placeholders are matched case-sensitively, so `<SKS>` or `<Sks>` trained the plain tokens
    instead of the embedding. The text graph sees concept settings only, not the run's embeddings, so it
    protects every `<...>` span, the form placeholders are written in; a placeholder without angle brackets
    is capitalised like any word. Each span becomes one uncased character while the style applies, so the
    text around it is styled as it was with the span in place (a span still ends a word for `title`).
    """
    spans = _PLACEHOLDER.findall(caption)
    if not spans:
        return style(caption)
    stand_in = next(chr(code) for code in range(0xE000, 0xF900) if chr(code) not in caption)
    styled = style(_PLACEHOLDER.sub(stand_in, caption)).split(stand_in)
    return styled[0] + "".join(span + rest for span, rest in zip(spans, styled[1:], strict=True))


def text_nodes() -> list[Node]:
    tag_settings = ("caption.tag_delimiter", "caption.keep_tags")
    return [
        Node(
            "caption_lines",
            ("image_path", "caption_path"),
            ("caption.lines",),
            _caption_lines,
            tuple(f"caption.{name}" for name in SOURCE_SETTINGS),
        ),
        Node("choose_caption", ("caption.lines",), ("caption.chosen",), _choose),
        Node(
            "tag_dropout",
            ("caption.chosen",),
            ("caption.tags_dropped",),
            _tag_dropout,
            (
                *tag_settings,
                "caption.tag_dropout",
                "caption.tag_dropout_keep",
                "caption.tag_dropout_only",
                "caption.tag_dropout_regex",
            ),
        ),
        Node(
            "shuffle_tags",
            ("caption.tags_dropped",),
            ("caption.shuffled",),
            _shuffle_tags,
            (*tag_settings, "caption.shuffle_tags"),
        ),
        Node("capitalize", ("caption.shuffled",), ("caption",), _capitalize, ("caption.random_capitalization",)),
    ]
