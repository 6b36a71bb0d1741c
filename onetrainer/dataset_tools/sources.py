"""Where a tool's model comes from: device and dtype choice, and hub ids versus local folders.

Loading goes through the libraries' own `from_pretrained` / `hf_hub_download`, so the hub cache and
`HF_HUB_OFFLINE` behave as users expect; what we add is telling a missing local folder from an
unavailable hub model, and saying how to fix either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

DTYPES = ("float32", "float16", "bfloat16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_device(device: str | None) -> str:
    """`None` means the first GPU when there is one, else the CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}", hint="Use cpu, cuda or cuda:N.") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was requested but no CUDA GPU is available", hint="Use --device cpu.")
    return str(parsed)


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """`None` means half precision on a GPU and float32 on the CPU, where half is slow or unsupported."""
    import torch

    if dtype is None:
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}", hint=f"Use one of: {', '.join(DTYPES)}.")
    return getattr(torch, dtype)


def local_path(source: str) -> Path | None:
    """The local file or folder `source` names, or None when it is a hub id.

    A string that exists on disk is a path; one shaped like `org/name` that does not exist is a hub
    id; anything else (`./models/x`, `/abs/path`, `~/x`) was meant as a path that is missing.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(source) and not source.startswith((".", "~")):
        return None
    raise UserError(f"model not found: {source}", hint="Pass an existing folder or file, or a hub id like org/name.")


def load_from_hub_or_path(load: Callable[[str], T], source: str, *, what: str) -> T:
    """Call `load(source)` and turn "not downloadable / not cached" into one clear `UserError`."""
    path = local_path(source)
    try:
        return load(str(path) if path is not None else source)
    except OSError as error:
        if path is not None:
            raise UserError(f"cannot load the {what} from {path}: {error}") from None
        raise UserError(
            f"the {what} {source!r} is not available: {_first_line(error)}",
            hint=_hub_hint(source),
        ) from None


def _hub_hint(source: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return (
            f"HF_HUB_OFFLINE is set and {source} is not in the hub cache: download it once with "
            f"`hf download {source}` where the network is available, or pass a local folder."
        )
    return f"Check the hub id and your connection, or download {source} and pass the local folder."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
