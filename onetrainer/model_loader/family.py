"""Which model family a base model is: from the name the user gave, else detected from the source.

`sample` and `convert` take `--model-type`; both parse it here, and `sample` (which must pick the
family's registered loader before loading) detects it here from the files or the hub's UNet config.
"""

from __future__ import annotations

import json
from pathlib import Path

from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.detect import MODEL, detect_path, family_from_unet_config
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.suggest import did_you_mean


def parse_model_type(name: str | None) -> ModelType | None:
    """The model type `name` spells (None stays None), or a user error that suggests the closest one."""
    if name is None:
        return None
    names = [member.value for member in ModelType]
    if name not in names:
        raise UserError(
            f"unknown model type {name!r}; {did_you_mean(name, names)}", hint=f"Use one of: {', '.join(names)}."
        )
    return ModelType(name)


def source_model_type(source: str, explicit: str | None = None) -> ModelType:
    """The family from `explicit`, else from the files of `source` (tiny:<name>, a path, or a hub id)."""
    named = parse_model_type(explicit)
    if named is not None:
        return named
    if source.startswith(TINY_PREFIX):
        family = source.removeprefix(TINY_PREFIX).removesuffix("-v")
        reason = "the tiny model's name"
    elif Path(source).expanduser().exists():
        detection = detect_path(source)
        if detection.kind != MODEL:
            raise UserError(f"{source} is a {detection.description}, not a base model")
        family, reason = detection.family, detection.reason
    else:
        family, reason = family_from_unet_config(_hub_unet_config(source))
    names = [member.value for member in ModelType]
    if family not in names:
        raise UserError(
            f"cannot tell which model family {source} is ({reason})",
            hint=f"Say it with --model-type ({', '.join(names)}).",
        )
    return ModelType(family)


def _hub_unet_config(repo: str) -> dict:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(repo, "unet/config.json")).read_text(encoding="utf-8"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise UserError(
            f"no such file or folder, and the hub model {repo!r} is not reachable ({type(error).__name__})",
            hint="Check the path; for a hub id, download it once while online or pass --model-type.",
        ) from None
