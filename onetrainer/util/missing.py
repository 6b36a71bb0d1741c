"""Errors for things the user named that are not there: a file or folder, or a model on the hub.

Every command meets these, so they are worded once here: what is missing, where the user named it
(`model.base`, `--model`, the MODEL argument: the caller says), and how to fix it. A hub model that is
neither a local path nor in the Hugging Face cache gets the same message whichever command or loader
looked for it, with the exact download command.
"""

from __future__ import annotations

import os
from pathlib import Path

from onetrainer.util.errors import UserError

_TRUE = ("1", "true", "yes", "on")


class ModelUnavailable(UserError):
    """A hub model that cannot be had here: not a local path, not cached, and not downloadable now."""

    title = "Model not available"


def hub_offline() -> bool:
    """Whether huggingface_hub will refuse to go online (`HF_HUB_OFFLINE`, read now or at its import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def model_unavailable(source: str, *, where: str | None, what: str = "model", reason: str = "") -> ModelUnavailable:
    """The one message for a hub model that is not on this machine and cannot be downloaded now.

    `what` names the role (`base model`, `VAE`, `captioning model`), `where` the key or option that
    named it, and `reason` what the hub library said, when that adds something (a failed connection).
    """
    offline = hub_offline()
    if offline:
        state = "and HF_HUB_OFFLINE is set, so it is not downloaded"
    else:
        state = "and the hub could not be reached" + (f" ({reason})" if reason else "")
    message = (
        f"the {what} {source!r} is not on this machine: it is not a local file or folder, "
        f"it is not in the Hugging Face cache, {state}"
    )
    download = f"`hf download {source}`"
    if offline:
        hint = (
            f"Download it once where the network is available: {download} (or unset HF_HUB_OFFLINE and run "
            "again to let onetrainer download it); or pass a local path instead."
        )
    else:
        hint = (
            f"Check the connection and the spelling of the hub id, or download it once with {download}; "
            "or pass a local path instead. Once it is cached, HF_HUB_OFFLINE=1 keeps onetrainer offline."
        )
    return ModelUnavailable(message, where=where, hint=hint)


def missing_path(path: str | os.PathLike[str], *, what: str, where: str | None, also: str = "") -> UserError:
    """A path the user gave that does not exist, with the absolute path it was looked for at.

    `also` is one more sentence for the hint (what else the value may be, such as a hub id).
    """
    given = Path(path).expanduser()
    looked = given if given.is_absolute() else Path.cwd() / given
    hint = f"Check the spelling; it was looked for at {looked} (relative paths start in the current folder)."
    return UserError(f"{what} not found: {path}", where=where, hint=f"{hint} {also}".strip())
