"""`KEY=VALUE` command-line overrides: dotted paths with list indices, checked against the schema.

An override that names a key the schema does not have is an error with a suggestion, exactly like a
misspelled key in a file; a list index may address an existing element or append one past the end.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from onetrainer.util.config.yaml_text import load_yaml
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.suggest import did_you_mean


def parse_override(text: str) -> tuple[list[str], Any] | ConfigProblem:
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        return ConfigProblem(text, "an override must look like KEY=VALUE, e.g. training.learning_rate=1e-4")
    parts = key.split(".")
    if any(part == "" for part in parts):
        return ConfigProblem(key, "empty segment in the key path")
    try:
        value = load_yaml(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        return ConfigProblem(key, f"value is not valid YAML: {exc}", raw_value, has_value=True)
    return parts, value


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / Annotated layers to reach the type that decides how a path descends."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def apply_override(data: dict, parts: list[str], value: Any, schema: type[BaseModel]) -> ConfigProblem | None:
    """Set `value` at `parts` inside `data`, creating intermediate mappings as the schema allows."""
    annotation: Any = schema
    container: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        annotation = _unwrap(annotation)
        last = depth == len(parts) - 1
        if _is_model(annotation):
            fields = annotation.model_fields
            if part not in fields:
                prefix = ".".join(parts[:depth]) + "." if depth else ""
                suggestion = did_you_mean(part, fields, prefix=prefix)
                return ConfigProblem(where, f"unknown key; {suggestion}valid here: {', '.join(fields)}")
            if not isinstance(container, dict):
                return ConfigProblem(where, "the value above this key is not a mapping")
            if last:
                container[part] = value
                return None
            next_annotation = fields[part].annotation
            child = container.get(part)
            if child is None:
                is_list = typing.get_origin(_unwrap(next_annotation)) is list
                child = [] if is_list else {}
                container[part] = child
            container, annotation = child, next_annotation
        elif typing.get_origin(annotation) is list:
            if not part.lstrip("-").isdigit():
                return ConfigProblem(where, f"'{part}' is not a list index (use 0, 1, ...)")
            index = int(part)
            if not isinstance(container, list):
                return ConfigProblem(where, "the value above this index is not a list")
            if index < 0 or index > len(container):
                return ConfigProblem(
                    where,
                    f"list index out of range: the list has {len(container)} item(s); use 0..{len(container)}",
                )
            item_annotation = typing.get_args(annotation)[0]
            if index == len(container):
                container.append({} if _is_model(_unwrap(item_annotation)) and not last else None)
            if last:
                container[index] = value
                return None
            container, annotation = container[index], item_annotation
        elif typing.get_origin(annotation) is dict:
            if not isinstance(container, dict):
                return ConfigProblem(where, "the value above this key is not a mapping")
            if last:
                container[part] = value
                return None
            container = container.setdefault(part, {})
            annotation = typing.get_args(annotation)[1]
        else:
            parent = ".".join(parts[:depth])
            return ConfigProblem(where, f"'{parent}' is a plain value and has no sub-keys")
    return None
