"""Reading YAML strictly: UTF-8 only, and no key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a second `sampling:` block silently
replaced the first; and reading with replacement characters turned a stray Latin-1 byte into a
different caption or path. Both are refused here, with the line (and byte offset) to fix, for run
configs, presets and `KEY=VALUE` overrides alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from onetrainer.util.errors import ConfigError, ConfigProblem

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping; lines are 1-based."""

    path: str
    first_line: int
    second_line: int

    def __str__(self) -> str:
        return (
            f"key given twice (lines {self.first_line} and {self.second_line}); YAML would keep only the "
            "second and silently drop the first"
        )


class DuplicateKeysError(yaml.YAMLError):
    """The document repeats keys; `duplicates` lists each one with its dotted path and lines."""

    def __init__(self, duplicates: list[DuplicateKey]) -> None:
        super().__init__("; ".join(f"{item.path}: {item}" for item in duplicates))
        self.duplicates = duplicates


@dataclass(frozen=True)
class InvalidUtf8:
    """Where the first byte that is not UTF-8 sits: 0-based byte offset, 1-based line and column."""

    offset: int
    byte: int
    line: int
    column: int

    def __str__(self) -> str:
        return (
            f"not valid UTF-8: byte 0x{self.byte:02x} at byte offset {self.offset} "
            f"(line {self.line}, column {self.column})"
        )


def decode_utf8(raw: bytes) -> str | InvalidUtf8:
    """The text (a leading byte-order mark dropped), or where the first invalid byte is."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line_start = raw.rfind(b"\n", 0, offset) + 1
        return InvalidUtf8(offset, raw[offset], raw.count(b"\n", 0, offset) + 1, offset - line_start + 1)


def _key_identity(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    """What the key becomes in Python (`yes` and `true` are the same key), hashable."""
    try:
        value = loader.construct_object(node)
        hash(value)
    except (yaml.YAMLError, TypeError):
        return (node.tag, node.value)
    return value


def _find_duplicates(loader: yaml.SafeLoader, node: Node, path: str, seen: set[int], found: list[DuplicateKey]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(loader, item, f"{path}.{index}" if path else str(index), seen, found)
        return
    if not isinstance(node, MappingNode):
        return
    first_seen: dict[object, ScalarNode] = {}
    for key, value in node.value:
        name = key.value if isinstance(key, ScalarNode) else "?"
        child = f"{path}.{name}" if path else str(name)
        if isinstance(key, ScalarNode) and key.tag != MERGE_TAG:
            identity = _key_identity(loader, key)
            if identity in first_seen:
                earlier = first_seen[identity]
                found.append(DuplicateKey(child, earlier.start_mark.line + 1, key.start_mark.line + 1))
            else:
                first_seen[identity] = key
        _find_duplicates(loader, value, path if key.tag == MERGE_TAG else child, seen, found)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, but a repeated key raises `DuplicateKeysError` (syntax errors raise as usual)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        found: list[DuplicateKey] = []
        _find_duplicates(loader, node, "", set(), found)
        if found:
            raise DuplicateKeysError(found)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml_mapping(raw: bytes, *, where: str) -> dict[str, Any]:
    """Decode (strict UTF-8) and parse one YAML mapping; `where` names its source in errors."""
    text = decode_utf8(raw)
    if isinstance(text, InvalidUtf8):
        raise ConfigError(
            [ConfigProblem("", str(text))],
            where=f"{where}:{text.line}:{text.column}",
            hint="Save the file as UTF-8 (any editor can; `iconv -f latin1 -t utf-8` converts Latin-1).",
        )
    try:
        data = load_yaml(text)
    except DuplicateKeysError as exc:
        problems = [ConfigProblem(item.path, str(item)) for item in exc.duplicates]
        raise ConfigError(
            problems,
            where=f"{where}:{exc.duplicates[0].second_line}",
            hint="Merge the two blocks into one, or delete the one you do not mean.",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        location = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ConfigError([ConfigProblem("", f"invalid YAML: {exc.problem or exc}")], where=location) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"invalid YAML: {exc}")], where=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigProblem("", f"the top level must be a mapping of keys, not {type(data).__name__}")],
            where=where,
        )
    return data
