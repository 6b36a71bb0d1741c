"""Where a single-file checkpoint's architecture comes from.

A single file holds weights only. Its component configs come from the configs shipped in the package
(no download; the family spec says which folder, per prediction type), or from an explicit diffusers
folder, hub id or tiny model, which may also hold the tokenizer (`tokenizers.load_tokenizer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onetrainer.model.configs import config_dir
from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, tiny_model

SCHEDULER_FILE = "scheduler/scheduler_config.json"


@dataclass
class Architecture:
    """Component configs (plain dicts, as in config.json files) and where a matching tokenizer may sit."""

    name: str
    configs: dict[str, dict[str, Any]]
    classes: dict[str, tuple[str, str]]
    """Component -> (library, class name), as `model_index.json` says."""
    tokenizer_at: tuple[str, str | None] | None = None
    """(folder or hub id, "tokenizer") when the source holds tokenizers: each text encoder's in its own
    subfolder (`tokenizer`, `tokenizer_2`)."""
    tiny: bool = field(default=False, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    """Pipeline-level settings of its `model_index.json` (`requires_safety_checker`), for a saved folder."""


def pipeline_settings(index: dict[str, Any]) -> dict[str, Any]:
    """The pipeline-level settings of a `model_index.json`: everything that is not a component or metadata
    (components are [library, class] lists in the file, tuples in a live pipeline's config)."""
    return {
        key: value for key, value in index.items() if not key.startswith("_") and not isinstance(value, (list, tuple))
    }


def config_files(spec: FamilySpec) -> dict[str, str]:
    """Component (and "scheduler") -> its config file in a diffusers folder."""
    return {**{name: f"{name}/config.json" for name in spec.component_names}, "scheduler": SCHEDULER_FILE}


def resolve_architecture(source: str | None, spec: FamilySpec, prediction_type: str | None) -> Architecture:
    """The architecture named by `source` (folder, hub id, tiny:<name>), or the one shipped for the family."""
    if source is None:
        shipped = spec.shipped_config_for(prediction_type)
        if shipped is None:
            raise UserError(
                f"no architecture is shipped for {spec.title} single files",
                where="model.config",
                hint="Pass the diffusers folder or hub id of the model's architecture (model.config / --config).",
            )
        folder = config_dir(shipped)
        configs = _read_folder_configs(folder, spec)
        index = _folder_index(folder)
        return Architecture(
            f"shipped {shipped} config",
            configs,
            _folder_classes(folder, index, configs),
            settings=pipeline_settings(index),
        )
    kind = source_kind(source, where="model.config")
    if kind == TINY:
        return _tiny_architecture(source, spec)
    if kind == HUB:
        configs, index = _read_hub_configs(source, spec)
        return Architecture(source, configs, _classes(index), (source, "tokenizer"), settings=pipeline_settings(index))
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(
            f"an architecture config must be a diffusers folder or hub id, not a file: {path}",
            where="model.config",
            hint="Pass the folder of a diffusers pipeline with the same architecture (it needs no weights).",
        )
    tokenizer_at = (str(path), "tokenizer") if (path / "tokenizer").is_dir() else None
    configs = _read_folder_configs(path, spec)
    index = _folder_index(path)
    classes = _folder_classes(path, index, configs)
    return Architecture(str(path), configs, classes, tokenizer_at, settings=pipeline_settings(index))


def _classes(index: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        name: (str(value[0]), str(value[1]))
        for name, value in index.items()
        if isinstance(value, list) and len(value) == 2 and value[0] is not None
    }


def _folder_index(folder: Path) -> dict[str, Any]:
    """A folder's `model_index.json`; empty when it has none."""
    path = folder / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return index if isinstance(index, dict) else {}


def _folder_classes(
    folder: Path, index: dict[str, Any], configs: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, str]]:
    """The classes `model_index.json` names; a folder of component configs alone has the ones its configs name
    (diffusers writes `_class_name`, transformers `architectures`), so a copy of just the configs serves."""
    if index:
        return _classes(index)
    classes: dict[str, tuple[str, str]] = {}
    for name, config in configs.items():
        if name == "scheduler":
            continue
        if isinstance(config.get("_class_name"), str):
            classes[name] = ("diffusers", config["_class_name"])
        elif isinstance(config.get("architectures"), list) and config["architectures"]:
            classes[name] = ("transformers", str(config["architectures"][0]))
        else:
            raise UserError(
                f"{folder / name / 'config.json'} names no class and {folder} has no model_index.json, so it "
                "cannot serve as an architecture config",
                where="model.config",
                hint="Pass the folder of a diffusers pipeline with the same architecture (it needs no weights).",
            )
    return classes


def _read_folder_configs(folder: Path, spec: FamilySpec) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for component, relative in config_files(spec).items():
        path = folder / relative
        if not path.is_file():
            if component != "scheduler" and spec.component(component).optional:
                continue
            raise UserError(
                f"{folder} has no {relative}, so it cannot serve as an architecture config",
                where="model.config",
                hint=f"Use the folder of a diffusers {spec.title} pipeline.",
            )
        configs[component] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def _read_hub_configs(repo: str, spec: FamilySpec) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The component configs and the `model_index.json` of a hub repo."""
    from huggingface_hub import hf_hub_download

    configs: dict[str, dict[str, Any]] = {}
    with hub_errors(repo, "architecture config", where="model.config"):
        index = json.loads(Path(hf_hub_download(repo, "model_index.json")).read_text(encoding="utf-8"))
        for component, relative in config_files(spec).items():
            configs[component] = json.loads(Path(hf_hub_download(repo, relative)).read_text(encoding="utf-8"))
    return configs, index


def _tiny_architecture(source: str, spec: FamilySpec) -> Architecture:
    from onetrainer.util.tiny.models import scheduler_config

    pipe = tiny_model(source.removeprefix(TINY_PREFIX))[1].build(0)
    configs: dict[str, dict[str, Any]] = {"scheduler": scheduler_config(pipe)}
    classes: dict[str, tuple[str, str]] = {}
    for name in spec.component_names:
        module = getattr(pipe, name, None)
        if module is not None:
            config = module.config
            configs[name] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            classes[name] = (type(module).__module__.split(".")[0], type(module).__name__)
    for component in spec.text_encoders:
        tokenizer = getattr(pipe, component.tokenizer or "", None)
        if tokenizer is not None and component.tokenizer is not None:
            classes[component.tokenizer] = (type(tokenizer).__module__.split(".")[0], type(tokenizer).__name__)
    return Architecture(source, configs, classes, tiny=True, settings=pipeline_settings(dict(pipe.config)))
