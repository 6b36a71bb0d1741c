"""Load a run config: defaults < preset < file < overrides, validated in one pass.

Every problem (YAML syntax, unknown keys, wrong types, out-of-range values, missing paths, malformed
overrides) is collected and raised together as one `ConfigError`, before anything heavy is imported.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from onetrainer.util.config.checks import cross_section_problems
from onetrainer.util.config.overrides import _is_model, _unwrap, apply_override, parse_override
from onetrainer.util.config.presets import load_preset
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.types import CHECK_PATHS
from onetrainer.util.config.yaml_text import parse_yaml_mapping
from onetrainer.util.errors import ConfigError, ConfigProblem, UserError
from onetrainer.util.suggest import did_you_mean, either

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


def read_yaml_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; unreadable bytes, bad syntax and repeated keys are `ConfigError`s."""
    if not path.exists():
        raise UserError(
            f"config file not found: {path}",
            hint="Check the path, or start from a preset: `onetrainer presets` lists them, "
            "`onetrainer presets NAME > my.yaml` writes one.",
        )
    if path.is_dir():
        raise UserError(f"expected a YAML config file, got a folder: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the config file: {exc.strerror or exc}", where=str(path)) from None
    return parse_yaml_mapping(raw, where=str(path))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the one below it."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_raw(
    file_data: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """Merge preset, file and overrides into one raw mapping (not yet validated).

    Malformed overrides are returned as problems rather than raised, so that validation can still
    report everything else that is wrong in the same pass.
    """
    problems: list[ConfigProblem] = []
    parsed: list[tuple[list[str], Any]] = []
    for text in overrides:
        result = parse_override(text)
        if isinstance(result, ConfigProblem):
            problems.append(result)
        else:
            parsed.append(result)

    data = dict(file_data or {})
    preset_name = data.get("preset")
    for parts, value in parsed:
        if parts == ["preset"]:
            preset_name = value
    if preset_name is not None:
        if not isinstance(preset_name, str):
            problems.append(ConfigProblem("preset", "expected a preset name", preset_name, has_value=True))
        else:
            data = deep_merge(load_preset(preset_name), data)
            data["preset"] = preset_name

    for parts, value in parsed:
        problem = apply_override(data, parts, value, TrainConfig)
        if problem is not None:
            problems.append(problem)
    return data, problems


def _annotations_along(loc: tuple[Any, ...]) -> list[Any]:
    """The schema's annotation (unwrapped) at each prefix of `loc`, from TrainConfig at `()`; shorter than
    `loc` + 1 where the path leaves the schema (a union's member name, a plain value's sub-key)."""
    annotation: Any = _unwrap(TrainConfig)
    found = [annotation]
    for part in loc:
        if _is_model(annotation):
            field = annotation.model_fields.get(str(part))
            if field is None:
                break
            annotation = field.annotation
        elif isinstance(part, int) and typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            break
        annotation = _unwrap(annotation)
        found.append(annotation)
    return found


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that owns the key at `loc`, to suggest its real field names."""
    along = _annotations_along(loc)
    annotation = along[-1] if len(along) == len(loc) + 1 else None
    return annotation if _is_model(annotation) else None


def _union_depth(loc: tuple[Any, ...]) -> int | None:
    """How many parts of `loc` lead to a union of types, when pydantic's next part names one of its members
    (`data.resolution.int`, `data.resolution.list[int]`): a name no config has."""
    along = _annotations_along(loc)
    for depth, annotation in enumerate(along[: len(loc)]):
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            return depth
    return None


_MEMBERS = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "list[int]": "a list of whole numbers",
    "list[float]": "a list of numbers",
}
"""What a union member pydantic names in a path asks for, in words."""


def _union_problem(prefix: tuple[Any, ...], errors: list[ErrorDetails]) -> ConfigProblem:
    """One problem at `prefix` for the errors of all a union's members: each member failed, so the value is
    none of them, and pydantic's member names are no keys."""
    members = [error for error in errors if tuple(error.get("loc", ()))[: len(prefix)] == prefix]
    tags = list(dict.fromkeys(str(error["loc"][len(prefix)]) for error in members))
    if "float" in tags and "int" in tags:  # a whole number is a number
        tags.remove("int")
    words = [_MEMBERS.get(tag, tag) for tag in tags]
    wanted = either(words)
    whole = next((error for error in members if len(error["loc"]) == len(prefix) + 1), members[0])
    return ConfigProblem(
        ".".join(str(part) for part in prefix), f"expected {wanted}", whole.get("input"), has_value=True
    )


def _problems_from_pydantic(errors: list[ErrorDetails]) -> list[ConfigProblem]:
    """Each error as a problem at its key path; the errors of one union's members as one problem."""
    problems = []
    unions: set[tuple[Any, ...]] = set()
    for error in errors:
        loc = tuple(error.get("loc", ()))
        depth = _union_depth(loc)
        if depth is None:
            problems.append(_problem_from_pydantic(error))
        elif loc[:depth] not in unions:
            unions.add(loc[:depth])
            problems.append(_union_problem(loc[:depth], errors))
    return problems


def _problem_from_pydantic(error: ErrorDetails) -> ConfigProblem:
    loc = tuple(error.get("loc", ()))
    path = ".".join(str(part) for part in loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        fields = list(owner.model_fields) if owner else []
        prefix = ".".join(str(part) for part in loc[:-1])
        suggestion = did_you_mean(str(loc[-1]), fields, prefix=f"{prefix}." if prefix else "")
        return ConfigProblem(path, f"unknown key; {suggestion}valid here: {', '.join(fields)}")
    message = error.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if kind == "missing":
        return ConfigProblem(path, "required key is missing")
    if kind == "finite_number":
        message = "must be a finite number, not nan or infinity"
    return ConfigProblem(path, message, error.get("input"), has_value=True)


def validate(
    data: dict[str, Any],
    *,
    check_paths: bool = True,
    where: str | None = None,
    earlier_problems: list[ConfigProblem] | None = None,
) -> TrainConfig:
    problems = list(earlier_problems or [])
    model = data.get("model")
    if not isinstance(model, dict) or model.get("base") in (None, ""):
        problems.append(
            ConfigProblem(
                "model.base",
                "required: a diffusers folder, a .safetensors/.ckpt file, or a hub id (org/name)",
            )
        )
    config: TrainConfig | None = None
    try:
        config = TrainConfig.model_validate(data, context={CHECK_PATHS: check_paths})
    except ValidationError as exc:
        problems.extend(_problems_from_pydantic(exc.errors()))
    except ConfigError as exc:  # the family's checks, which run once every field is valid
        problems.extend(exc.problems)
    if config is not None:
        problems.extend(cross_section_problems(config))
    if problems or config is None:
        raise ConfigError(problems, where=where, hint=_hint(problems))
    return config


_CONCEPT_PATH = re.compile(r"data\.concepts\.\d+\.path")


def _hint(problems: list[ConfigProblem]) -> str:
    """What to do about the first kind of problem found: what to set, and how (never "see a preset":
    the failing file is often a preset's copy)."""
    if any(problem.message.startswith("an override") for problem in problems):
        return "Overrides look like `training.learning_rate=1e-4` or `data.concepts.0.path=~/cats`."
    concept = next((problem.path for problem in problems if _CONCEPT_PATH.fullmatch(problem.path)), None)
    if concept is not None:
        return (
            f"Set {concept} to a folder of your images (captions in name.txt beside each image), in the file "
            f"or on the command line: `{concept}=~/datasets/my-cat`."
        )
    if any(problem.path == "model.base" for problem in problems):
        return (
            "Set model.base to a diffusers folder, a .safetensors/.ckpt file or a hub id, e.g. "
            "`model.base=stable-diffusion-v1-5/stable-diffusion-v1-5`."
        )
    if any("unknown key" in problem.message for problem in problems):
        return "Every key must be one the schema knows; each line above names the closest key and the valid ones."
    return "Fix the values above: each line names the key, the value given and what would be valid."


def load_config(
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    check_paths: bool = True,
) -> TrainConfig:
    """Read, merge and validate a run config; raises `ConfigError` listing every problem."""
    file_data = read_yaml_file(Path(path)) if path is not None else {}
    where = str(path) if path is not None else None
    try:
        raw, problems = resolve_raw(file_data, overrides)
        return validate(raw, check_paths=check_paths, where=where, earlier_problems=problems)
    except ConfigError as error:
        error.where = _where(where, overrides, error.problems)
        raise


def _where(file: str | None, overrides: list[str] | tuple[str, ...], problems: list[ConfigProblem]) -> str | None:
    """The file, and `command line: KEY=VALUE` for each override a problem's key path is set by."""

    def covers(key: str, path: str) -> bool:
        return path == key or path.startswith(f"{key}.") or key.startswith(f"{path}.")

    # the last override of a key is the one that counts; one without a key (`=5`) is its problem's path
    keys = {text.partition("=")[0].strip() or text: text for text in overrides}
    blamed = [text for key, text in keys.items() if any(covers(key, problem.path) for problem in problems)]
    in_file = any(not any(covers(key, problem.path) for key in keys) for problem in problems)
    parts = ([file] if file and in_file else []) + [f"command line: {text}" for text in blamed]
    return ", ".join(parts) or file


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML; loading it back yields an equal object."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
