"""Where a run writes (workspace, cache, output): checked before anything loads, and tidied.

A path that cannot be written is otherwise found when the first file is written there: the
workspace at start-up with an "unexpected error", the output only after the last step, hours of
training later. So before anything heavy: the workspace and cache must be folders (or creatable
ones), the output must suit its format and not collide with an existing folder or file of the other
kind, and the nearest existing folder of each must be writable.

Tidying: temporary files a killed earlier run left (see `util.atomic.remove_stale_temps`) are
removed at the start of the next one, and folders a run created are removed again if it fails
before doing any work (a model that does not load leaves no empty workspace behind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from onetrainer.trainer.workspace import WorkspaceInUse
from onetrainer.util.atomic import remove_stale_temps
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError
from onetrainer.util.writable import creation_error

_OUTPUT_HINT = (
    "Set `saving.output` to a path that suits `saving.format`: a .safetensors file for a LoRA or an "
    "embedding; for a full model a .safetensors file or a folder (diffusers)."
)


def cache_dir(config: TrainConfig) -> Path:
    from onetrainer.data_loader.loader import default_cache_dir

    return default_cache_dir(config)


def _nearest_existing(path: Path) -> Path:
    """The first of `path` and its ancestors that exists (`path` is absolute, so the root at least)."""
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())


def _check_creatable(folder: Path, key: str) -> None:
    """`folder` exists as a writable folder, or can be created under one."""
    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise UserError(
            f"{folder} cannot be created: {existing} is a file, not a folder",
            where=key,
            hint=f"Choose another path for `{key}`, or move that file away.",
        )
    if not os.access(existing, os.W_OK | os.X_OK) or creation_error(existing) is not None:
        raise UserError(
            f"{existing} is not writable, so `{key}` cannot be written there: {folder}",
            where=key,
            hint=f"Choose a folder you can write to for `{key}`, or change the folder's permissions.",
        )


def _check_folder(path: Path, key: str) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(
            f"`{key}` must be a folder, but {path} is a file",
            where=key,
            hint=f"Choose a folder path for `{key}`; it is created if it does not exist.",
        )
    _check_creatable(path, key)


def _check_output(config: TrainConfig) -> None:
    from onetrainer.model_saver.formats import METHOD_KINDS, check_output, resolve_format

    output = config.saving.output
    kind = METHOD_KINDS[config.method]
    try:
        fmt = resolve_format(config.saving.format, kind, output)
    except UserError as error:
        raise UserError(error.message, where="saving.format", hint=error.hint) from None
    try:
        check_output(output, fmt, kind, overwrite=True, keep=_kept_by_the_run(config), read=_read_by_the_run(config))
    except UserError as error:
        raise UserError(error.message, where="saving.output", hint=_OUTPUT_HINT) from None
    _check_creatable(output.parent, "saving.output")


def _kept_by_the_run(config: TrainConfig) -> dict[str, Path]:
    """What the run keeps, named for the error when the output would replace it (the output is saved over
    whatever is there: a run re-saves it at every cadence)."""
    keep = {f"the workspace {config.workspace}": config.workspace}
    if config.data.cache_dir is not None:
        keep[f"the cache {config.data.cache_dir}"] = config.data.cache_dir
    for index, concept in enumerate(config.data.concepts):
        keep[f"the images of data.concepts.{index} ({concept.path})"] = concept.path
    return keep


def _read_by_the_run(config: TrainConfig) -> dict[str, Path]:
    """The local models the run reads, which the output may replace (continuing a fine-tune in place) but not
    hold."""
    values = (("model.base", config.model.base), ("model.vae", config.model.vae))
    return {
        f"the model {key} names ({value})": Path(value)
        for key, value in values
        if value is not None and Path(value).expanduser().exists()
    }


def check_destinations(config: TrainConfig, *, output: bool = True) -> None:
    """Raise a `UserError` for a workspace, cache or output (when `output`) the run could not write."""
    _check_folder(config.workspace, "workspace")
    if config.data.cache_dir is not None:
        _check_folder(config.data.cache_dir, "data.cache_dir")
    if output:
        _check_output(config)


def remove_stale_temporaries(config: TrainConfig, *, output: bool = True) -> list[Path]:
    """Temporary files a killed earlier run left in the workspace, the cache and beside the output."""
    removed = remove_stale_temps(config.workspace, recursive=True)
    cache = cache_dir(config)
    if not cache.absolute().is_relative_to(config.workspace.absolute()):
        removed += remove_stale_temps(cache, recursive=True)
    if output:
        removed += remove_stale_temps(config.saving.output.parent)
    return removed


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder that creating `path` would create, or None if it exists."""
    missing = None
    for candidate in (path.absolute(), *path.absolute().parents):
        if candidate.exists():
            return missing
        missing = candidate
    return missing


@contextlib.contextmanager
def removed_on_failure(*folders: Path, enabled: bool = True) -> Iterator[None]:
    """Folders among `folders` that do not exist yet are removed again if the block fails.

    For the start of a run (loading the model, scanning the data): what it created then is
    bookkeeping that the next attempt recreates, and an empty workspace left behind only confuses.
    """
    created = {root for root in map(_topmost_missing, folders) if root is not None}
    try:
        yield
    except BaseException as error:
        # a run refused because another holds the workspace did not create it: that run did, just now
        if enabled and not isinstance(error, WorkspaceInUse):
            for root in created:
                shutil.rmtree(root, ignore_errors=True)
        raise
