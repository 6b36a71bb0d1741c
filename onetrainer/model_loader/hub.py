"""The Hugging Face hub as a model source: classify a source string and turn hub failures into clear errors.

`HF_HUB_OFFLINE=1` is respected by huggingface_hub itself; what it cannot do is explain, so every
hub access goes through `hub_errors`, which says whether the model is missing, gated, or simply not
in the local cache while offline. Errors name where the source was given as the config key
(`model.base`, `model.vae`, ...); a command that takes it from an argument renames that key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from onetrainer.util.config.types import TINY_PREFIX, is_hub_id
from onetrainer.util.errors import UserError
from onetrainer.util.family import tiny_names
from onetrainer.util.missing import hub_offline, missing_path, model_unavailable

__all__ = ["HUB", "LOCAL", "TINY", "hub_errors", "hub_offline", "source_kind"]

TINY, LOCAL, HUB = "tiny", "local", "hub"


def source_kind(source: str, *, where: str | None = None) -> str:
    """TINY, LOCAL (an existing path) or HUB; a user error if it is none of them."""
    if source.startswith(TINY_PREFIX):
        name = source.removeprefix(TINY_PREFIX)
        if name not in tiny_names():
            raise UserError(
                f"unknown tiny model {source!r}",
                where=where,
                hint=f"Use one of: {', '.join(TINY_PREFIX + k for k in tiny_names())}.",
            )
        return TINY
    if Path(source).expanduser().exists():
        return LOCAL
    if is_hub_id(source):
        return HUB
    raise missing_path(source, what="file or folder", where=where, also="A hub id looks like org/name.")


@contextlib.contextmanager
def hub_errors(repo: str, what: str, *, where: str | None = None, hub: bool = True) -> Iterator[None]:
    """Re-raise download and lookup failures of the `what` (`base model`, `VAE`) `repo` as user errors.

    With `hub=False` (`repo` is a local folder) a failure means the folder is incomplete.
    """
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise UserError(
            f"{repo} is gated on the hub: cannot fetch the {what}",
            where=where,
            hint="Accept its licence on huggingface.co and log in with `hf auth login`, or use a local copy.",
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"no hub repository named {repo}", where=where, hint="Check the spelling, or pass a local path."
        ) from None
    except LocalEntryNotFoundError:
        raise model_unavailable(repo, where=where, what=what) from None
    except EntryNotFoundError as error:
        raise UserError(
            f"{repo} on the hub lacks a file the {what} needs ({_first_line(error)})",
            where=where,
            hint="Is it a diffusers repository?",
        ) from None
    except HfHubHTTPError as error:
        raise UserError(f"hub request for the {what} {repo} failed: {_first_line(error)}", where=where) from None
    except OSError as error:
        if not hub:
            raise UserError(
                f"cannot load the {what} from {repo}: {_first_line(error)}",
                where=where,
                hint="The diffusers folder is incomplete or damaged; export it again.",
            ) from None
        raise model_unavailable(repo, where=where, what=what, reason=_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
