"""Which model family a base model is: from the name the user gave, else detected from the source.

Every command with `--model-type` parses it here, against the registry: a command accepts the
families that have the modules it needs (`sample` a loader and a sampler), so no command accepts a
family it cannot run. `sample`, which must pick the family's registered loader before loading,
detects the family here from the files or the hub's UNet config. The bucket step that image sizes
must be a multiple of comes from the family's registered setup, without loading anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.detect import MODEL, detect_path, family_from_unet_config
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup, supported
from onetrainer.util.suggest import did_you_mean

DEFAULT_BUCKET_STEP = 8
"""Image side multiple when a setup does not name its own (SD 1.x/2.x: the VAE's factor of 8)."""


def supported_types(needs: Sequence[ModuleKind]) -> list[ModelType]:
    """The model types registered for every module kind in `needs`, in name order."""
    usable = set(ModelType)
    for kind in needs:
        usable &= set(supported(kind))
    return sorted(usable, key=lambda model_type: model_type.value)


def parse_model_type(name: str | None, *, needs: Sequence[ModuleKind], where: str = "--model-type") -> ModelType | None:
    """`require_model_type`, with None (not given) staying None."""
    return None if name is None else require_model_type(name, needs=needs, where=where)


def require_model_type(name: str, *, needs: Sequence[ModuleKind], where: str = "--model-type") -> ModelType:
    """The model type `name` spells, if it has every module in `needs`; else a user error listing those that do."""
    usable = supported_types(needs)
    names = ", ".join(model_type.value for model_type in usable) or "none"
    known = [member.value for member in ModelType]
    if name not in known:
        raise UserError(
            f"unknown model type {name!r}; {did_you_mean(name, known)}".rstrip("; "),
            where=where,
            hint=f"This command supports: {names}.",
        )
    return _require_usable(ModelType(name), usable, where=where)


def _require_usable(model_type: ModelType, usable: list[ModelType], *, where: str) -> ModelType:
    if model_type not in usable:
        raise UserError(
            f"model type {model_type.value!r} is not supported by this command in this version",
            where=where,
            hint=f"This command supports: {', '.join(m.value for m in usable) or 'none'}.",
        )
    return model_type


def source_model_type(source: str, explicit: str | None = None, *, needs: Sequence[ModuleKind]) -> ModelType:
    """The family from `explicit`, else from the files of `source` (tiny:<name>, a path, or a hub id)."""
    named = parse_model_type(explicit, needs=needs)
    if named is not None:
        return named
    kind = source_kind(source, where="model.base")
    if kind == TINY:
        family = source.removeprefix(TINY_PREFIX).removesuffix("-v")
        reason = "the tiny model's name"
    elif kind == HUB:
        family, reason = family_from_unet_config(_hub_unet_config(source))
    else:
        detection = detect_path(source)
        if detection.kind != MODEL:
            raise UserError(f"{source} is a {detection.description}, not a base model", where="model.base")
        family, reason = detection.family, detection.reason
    usable = supported_types(needs)
    if family not in [member.value for member in ModelType]:
        raise UserError(
            f"cannot tell which model family {source} is ({reason})",
            where="model.base",
            hint=f"Say it with --model-type ({', '.join(m.value for m in usable)}).",
        )
    return _require_usable(ModelType(family), usable, where="model.base")


def bucket_step(model_type: ModelType) -> int:
    """The multiple that image sides must be for this family (its setup's `quantisation`)."""
    setup = lookup(ModuleKind.SETUP, model_type)
    return int(getattr(setup, "quantisation", DEFAULT_BUCKET_STEP))


def _hub_unet_config(repo: str) -> dict:
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, "base model", where="model.base"):
        return json.loads(Path(hf_hub_download(repo, "unet/config.json")).read_text(encoding="utf-8"))
