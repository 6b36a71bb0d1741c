"""The Hugging Face hub as a model source: classify a source string and turn hub failures into clear errors.

`HF_HUB_OFFLINE=1` is respected by huggingface_hub itself; what it cannot do is explain, so every
hub access goes through `hub_errors`, which says whether the model is missing, gated, or simply not
in the local cache while offline.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.errors import UserError

TINY, LOCAL, HUB = "tiny", "local", "hub"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TINY_KINDS = {"sd15": "sd15", "sd2": "sd2", "sd2-v": "sd2-v"}
"""`tiny:<name>` -> the tiny-model kind it builds (`sd2` is epsilon, `sd2-v` v-prediction)."""


def source_kind(source: str) -> str:
    """TINY, LOCAL (an existing path) or HUB; a user error if it is none of them."""
    if source.startswith(TINY_PREFIX):
        name = source.removeprefix(TINY_PREFIX)
        if name not in TINY_KINDS:
            raise UserError(
                f"unknown tiny model {source!r}", hint=f"Use one of: {', '.join('tiny:' + k for k in TINY_KINDS)}."
            )
        return TINY
    if Path(source).expanduser().exists():
        return LOCAL
    looks_local = source.startswith(("/", "./", "../", "~")) or source.lower().endswith(WEIGHT_SUFFIXES)
    if _HUB_ID.match(source) and not looks_local:
        return HUB
    raise UserError(f"no such file or folder: {source}", hint="A hub id looks like org/name.")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_errors(repo: str, what: str, *, hub: bool = True) -> Iterator[None]:
    """Re-raise download and lookup failures for `repo` as `UserError`s that say how to fix them.

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
            f"{repo} is gated on the hub: cannot fetch its {what}",
            hint="Accept its licence on huggingface.co and log in with `hf auth login`, or use a local copy.",
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"no hub repository named {repo}", hint="Check the spelling, or pass a local path.") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"the {what} of {repo} is not in the local Hugging Face cache, and the hub is unreachable or offline",
            hint="Unset HF_HUB_OFFLINE and connect once to download it, or pass a local folder or file.",
        ) from None
    except EntryNotFoundError:
        raise UserError(f"{repo} on the hub has no {what}", hint="Is it a diffusers repository?") from None
    except HfHubHTTPError as error:
        raise UserError(f"hub request for the {what} of {repo} failed: {error}") from None
    except OSError as error:
        if not hub:
            raise UserError(
                f"cannot load the {what} of {repo}: {str(error).splitlines()[0]}",
                hint="The diffusers folder is incomplete or damaged; export it again.",
            ) from None
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise UserError(
            f"cannot load the {what} of {repo}{offline}: {str(error).splitlines()[0]}",
            hint="Download it once with the hub reachable, or pass a local diffusers folder.",
        ) from None
