"""Load a run config: defaults < preset < file < overrides, validated in one pass.

Every problem (YAML syntax, unknown keys, wrong types, out-of-range values, missing paths, malformed
overrides) is collected and raised together as one `ConfigError`, before anything heavy is imported.
"""

from __future__ import annotations

import copy
import re
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
from onetrainer.util.suggest import did_you_mean

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


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that owns the key at `loc`, to suggest its real field names."""
    annotation: Any = TrainConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif isinstance(part, int):
            args = getattr(annotation, "__args__", ())
            annotation = args[0] if args else None
        elif getattr(annotation, "__origin__", None) is dict:
            annotation = annotation.__args__[1]
        else:
            return None
    annotation = _unwrap(annotation)
    return annotation if _is_model(annotation) else None


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
        problems.extend(_problem_from_pydantic(error) for error in exc.errors())
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

    keys = {text.partition("=")[0].strip(): text for text in overrides}
    blamed = [text for key, text in keys.items() if any(covers(key, problem.path) for problem in problems)]
    in_file = any(not any(covers(key, problem.path) for key in keys) for problem in problems)
    parts = ([file] if file and in_file else []) + [f"command line: {text}" for text in blamed]
    return ", ".join(parts) or file


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML; loading it back yields an equal object."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
