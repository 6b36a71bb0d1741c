"""OneTrainer's defaults (TrainConfig `__version` 11) and how it reads a file over them.

The defaults are data (`defaults.json`, facts from OneTrainer's schema as the reference page records
them): the top-level settings, one template for the 13 model-part objects plus what differs per part,
the embedding, concept, sample and optimizer objects, and each optimizer's built-in defaults.

OneTrainer overlays a file on its defaults key by key: a missing key keeps the default, a number is
coerced (`int("10")`, `float("inf")`) and so is text (`"resolution": 1024` reads as "1024"),
`optimizer_defaults` is replaced wholesale and lists of objects are rebuilt element by element from
the item defaults. Unlike OneTrainer, which skips an unknown key or an unreadable value without a
word, `overlay` reports each one.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onetrainer.util.config.onetrainer_json.findings import Ledger
from onetrainer.util.config.onetrainer_json.tables import ENUM_FIELDS

_DATA = Path(__file__).with_name("defaults.json")


@functools.cache
def _data() -> dict[str, Any]:
    return json.loads(_DATA.read_text(encoding="utf-8"))


def part_names() -> tuple[str, ...]:
    """The 13 model-part objects every OneTrainer config holds, used or not."""
    return tuple(_data()["part_names"])


def part_defaults(name: str) -> dict[str, Any]:
    data = _data()
    return {**copy.deepcopy(data["part"]), **data["part_overrides"].get(name, {})}


def train_defaults() -> dict[str, Any]:
    """A complete v11 TrainConfig of defaults (`concepts`/`samples` null, as OneTrainer's own)."""
    data = _data()
    config = copy.deepcopy(data["train_config"])
    for name in part_names():
        config[name] = part_defaults(name)
    for key in ("embedding", "quantization", "cloud"):
        config[key] = copy.deepcopy(data[key])
    config["optimizer"] = copy.deepcopy(data["optimizer"])
    config["optimizer_defaults"] = {}
    return config


def concept_defaults() -> dict[str, Any]:
    return copy.deepcopy(_data()["concept"])


def sample_defaults(model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A sample's defaults: OneTrainer's generic ones, under `model`'s (a family's `onetrainer_sample_defaults`)."""
    return {**copy.deepcopy(_data()["sample"]), **(model or {})}


def embedding_defaults() -> dict[str, Any]:
    return copy.deepcopy(_data()["embedding"])


def optimizer_defaults(name: str) -> dict[str, Any]:
    """The optimizer object with `name`'s built-in defaults over the schema's (what a null field means)."""
    data = _data()
    values = {**copy.deepcopy(data["optimizer"]), **copy.deepcopy(data["optimizer_builtins"].get(name, {}))}
    values["optimizer"] = name
    return _coerce_object(values, values, "optimizer", "optimizer.", Ledger())


def migration_model_types(rule: str) -> tuple[str, ...]:
    """Model types a `__version` migration step treats specially (see `migrations`)."""
    return tuple(_data()["migration_model_types"][rule])


_KINDS = {"int": int, "float": float, "str": str}


def _nullable_kind(group: str, key: str) -> type | None:
    name = _data()["nullable_types"].get(group, {}).get(key)
    return _KINDS[name] if name else None


def _coerce(value: Any, default: Any, kind: type | None, key: str) -> Any:
    """`value` as OneTrainer stores field `key`; raises ValueError where OneTrainer could not set it."""
    if value is None:
        if default is None or kind is not None:
            return None  # a nullable field (`kind` given) may be null whatever its default: clip_grad_norm
        raise ValueError("must not be null")
    target = kind or type(default)
    if target is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if target is int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        return int(value)
    if target is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if target is str:
        members = ENUM_FIELDS.get(key)
        if members is None:
            return value if isinstance(value, str) else str(value)  # OneTrainer reads text fields with str()
        if not isinstance(value, str) or value not in members:
            raise ValueError(f"not a value OneTrainer knows; valid: {', '.join(members)}")
        return value
    return copy.deepcopy(value)


def _coerce_object(raw: dict[str, Any], defaults: dict[str, Any], group: str, prefix: str, ledger: Ledger) -> dict:
    """`raw` over `defaults`, field by field; unknown keys and unreadable values are reported."""
    result = copy.deepcopy(defaults)
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            ledger.note(path, value, "not a OneTrainer setting (OneTrainer ignores it too)")
            continue
        try:
            result[key] = _coerce(value, defaults[key], _nullable_kind(group, key), key)
        except (TypeError, ValueError) as error:
            ledger.refuse(path, value, f"OneTrainer cannot read this value ({error}) and would use its default")
    return result


def given_object(value: Any, key: str, ledger: Ledger) -> dict[str, Any]:
    """`value` when it is an object; else `{}` (OneTrainer's defaults), refused unless it is null or absent, as
    OneTrainer could not read it."""
    if isinstance(value, dict):
        return value
    if value is not None:
        ledger.refuse(key, value, "expected an object, which OneTrainer could not read either; defaults used")
    return {}


ItemReader = Callable[[dict[str, Any], str], dict[str, Any]]
"""`read(item, prefix)`: one object of a list over its defaults, its findings under `prefix`."""


def _objects(raw: Any, read: ItemReader, prefix: str, ledger: Ledger, what: str) -> list[dict[str, Any] | None] | None:
    """The list `raw`, each object `read`. What OneTrainer could not read is refused, never replaced: a value that
    is no list, and an item that is no object (None in its place, so that later items keep their index)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        ledger.refuse(prefix.rstrip("."), raw, f"expected a list of {what}, which OneTrainer could not read either")
        return None
    items: list[dict[str, Any] | None] = []
    for index, item in enumerate(raw):
        if isinstance(item, dict):
            items.append(read(item, f"{prefix}{index}."))
        else:
            ledger.refuse(f"{prefix}{index}", item, f"expected an object in the list of {what}; it is left out")
            items.append(None)
    return items


def _fields(defaults: dict[str, Any], group: str, ledger: Ledger) -> ItemReader:
    return lambda item, prefix: _coerce_object(item, defaults, group, prefix, ledger)


def overlay_concept(raw: dict[str, Any], prefix: str, ledger: Ledger) -> dict[str, Any]:
    defaults = concept_defaults()
    concept = _coerce_object(
        {k: v for k, v in raw.items() if k not in ("image", "text")}, defaults, "concept", prefix, ledger
    )
    for key in ("image", "text"):
        nested = given_object(raw.get(key), f"{prefix}{key}", ledger)
        concept[key] = _coerce_object(nested, defaults[key], key, f"{prefix}{key}.", ledger)
    return concept


def overlay_concepts(raw: Any, prefix: str, ledger: Ledger) -> list[dict[str, Any] | None] | None:
    """The concepts of list `raw` over OneTrainer's concept defaults (see `_objects`)."""
    return _objects(raw, lambda item, at: overlay_concept(item, at, ledger), prefix, ledger, "concepts")


def overlay_samples(
    raw: Any, prefix: str, ledger: Ledger, defaults: dict[str, Any]
) -> list[dict[str, Any] | None] | None:
    return _objects(raw, _fields(defaults, "sample", ledger), prefix, ledger, "samples")


NESTED = ("embedding", "quantization")
OWN_READERS = ("cloud", "optimizer", "optimizer_defaults", "concepts", "samples", "additional_embeddings")
"""Top-level keys read by their own rules, not field by field."""


def overlay(raw: dict[str, Any], ledger: Ledger) -> dict[str, Any]:
    """A complete v11 config: `raw` (already migrated) over the defaults, as OneTrainer loads it.

    `concepts` and `samples` stay as given (null or a list, read by `overlay_concepts` /
    `overlay_samples` once the files are resolved); the optimizer object is resolved separately
    (`optimizer.resolve_optimizer`), because OneTrainer's entry points disagree on it; the `cloud`
    object is kept as given (only `cloud.enabled` matters here).
    """
    defaults = train_defaults()
    objects = (*part_names(), *NESTED, *OWN_READERS)
    scalars = {key: value for key, value in defaults.items() if key not in objects}
    flat = {key: value for key, value in raw.items() if key not in objects}
    config = {**defaults, **_coerce_object(flat, scalars, "top", "", ledger)}
    for name in (*part_names(), *NESTED):
        value = given_object(raw.get(name), name, ledger)
        group = name if name in NESTED else "part"
        config[name] = _coerce_object(value, defaults[name], group, f"{name}.", ledger)
    config["cloud"] = {**defaults["cloud"], **given_object(raw.get("cloud"), "cloud", ledger)}
    config["additional_embeddings"] = (
        _objects(
            raw.get("additional_embeddings"),
            _fields(embedding_defaults(), "embedding", ledger),
            "additional_embeddings.",
            ledger,
            "embeddings",
        )
        or []
    )
    config["concepts"] = raw.get("concepts")
    config["samples"] = raw.get("samples")
    return config
